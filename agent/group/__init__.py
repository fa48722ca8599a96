"""Running as a group (issue #17): the broker is the arbiter, no consensus of our own.

Every member keeps one control connection (clean session, `faultmail-<group>-<instance>-ctl`)
with a Last Will on its retained status topic. Over it the member learns who is online, who
holds the standby lease and which devices the group has blocked, and publishes:

- forwards (shared mode): a device's messages go to one owner, the live member that rendezvous
  hashing picks for its UID, so flood counts, blocks, threads and follow-ups stay whole
  although Mosquitto splits a device's messages round robin across the members;
- held records: an accepted alert is published retained under `held/<instance>/<identity>`
  before the device's message is acknowledged, and cleared once the alert is mailed (or
  otherwise settled), so a member that dies for good strands nothing it had acknowledged;
- blocks: retained under `blocked/<uid>`, honoured by every member, cleared by an unblock on
  any member.

A member that stays offline for cluster.takeover_after is adopted by one survivor (shared: the
rendezvous pick for it; standby: the lease holder): its held records are fed into the
survivor's intake, and in shared mode its MQTT session is taken over (agent.takeover).
In standby mode only the lease holder runs an MQTT data session (one session for the group,
`faultmail-<group>`, whose Will clears the lease); a member that loses the lease while active
exits 75 and systemd restarts it as a standby.

The parts, each one module: `names` (topics, client ids, sessions), `records` (the retained
messages' payloads), `membership` (the view of the group, rendezvous ownership), `control`
(the control connection), `activation` (the shared start, the standby lease), `held` (held
records), `adoption` (adopting an offline member), `blocks` (shared blocks), `group_file`
(`group.json`), and `runtime`, whose `Group` composes them.
"""

from agent.group.held import HELD_SOURCE
from agent.group.membership import rendezvous
from agent.group.names import Names, data_session
from agent.group.runtime import Group

__all__ = ["HELD_SOURCE", "Group", "Names", "data_session", "rendezvous"]
