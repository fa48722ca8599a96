"""paho's MQTT 5 property objects, made without rebuilding paho's constant tables each time.

paho (2.2) makes a Properties object for every PUBLISH it receives on an MQTT 5 session. Its
__init__ builds three constant tables anew for each (the 7 type names, the 27 property names
and the 27 property ids with the packets each may appear in), and unpack() first clears the
object by trying all 27 names with hasattr. Together 10 µs of the ~100 µs of CPU an alert
costs at ingest, where the GIL is the limit. paho only ever reads those tables, so every
object can share one set of them; and the only attributes such an object holds besides the
tables and its packet type are the properties its __setattr__ admitted, so clearing needs to
remove just those.

paho has no hook for this, so the two methods are replaced, as agent.canonical does for
dkimpy's functions. install() first checks that paho's own still make what ours make (every
packet type, and clearing an object that holds properties); a paho that changed them keeps
its own.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from agent.imports import attributes_set, without_dnspython

# Imported as agent.mqtt_client imports paho: without dnspython (see agent.imports).
_properties: Any = without_dnspython("paho.mqtt.properties")
Properties: Any = _properties.Properties
PacketTypes: Any = _properties.PacketTypes

# What paho's __init__ sets: the packet type and the three tables.
_OWN = ("packetType", "types", "names", "properties")
_ORIGINAL: dict[str, Callable[..., None]] = {
    "__init__": Properties.__init__,
    "clear": Properties.clear,
}
# The tables every object shares once installed (made by paho's own __init__).
_TABLES: dict[str, Any] = {}


def _init(self: Any, packetType: int) -> None:
    own = self.__dict__
    own["packetType"] = packetType
    own.update(_TABLES)


def _clear(self: Any) -> None:
    own = self.__dict__
    for name in [name for name in own if name not in _OWN]:
        del own[name]


def _made_by(init: Callable[..., None], packet_type: int) -> Any:
    made = Properties.__new__(Properties)
    init(made, packet_type)
    return made


def _packet_types() -> list[int]:
    return [value for name, value in vars(PacketTypes).items() if name.isupper()]


def _same_as_pahos() -> bool:
    """Ours make and clear objects exactly as paho's own do, for every packet type."""
    try:
        return _compared()
    except Exception:  # a paho whose own now raise on the probe keeps its own
        return False


def _compared() -> bool:
    tables = vars(_made_by(_ORIGINAL["__init__"], PacketTypes.PUBLISH))
    if set(tables) != set(_OWN):
        return False
    _TABLES.clear()
    _TABLES.update({name: tables[name] for name in _OWN if name != "packetType"})
    for packet_type in _packet_types():
        if vars(_made_by(_ORIGINAL["__init__"], packet_type)) != vars(_made_by(_init, packet_type)):
            return False
    held = []
    for clear in (_ORIGINAL["clear"], _clear):
        publish = _made_by(_ORIGINAL["__init__"], PacketTypes.PUBLISH)
        publish.MessageExpiryInterval = 60
        publish.ContentType = "application/json"
        publish.UserProperty = ("site", "Brno")
        clear(publish)
        held.append(vars(publish))
    return bool(held[0] == held[1])


def install() -> bool:
    """Replace paho's two methods with ours; False (paho keeps its own) if paho's make or
    clear an object otherwise. Idempotent."""
    if Properties.__init__ is _init:
        return True
    if not _same_as_pahos():
        return False
    Properties.__init__ = _init
    Properties.clear = _clear
    return True


def pahos_own() -> AbstractContextManager[None]:
    """paho's own methods for the duration (to compare with them)."""
    return attributes_set({(Properties, name): method for name, method in _ORIGINAL.items()})
