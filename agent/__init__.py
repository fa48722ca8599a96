"""faultmail: MQTT device faults to e-mail, through a durable outbox."""
