"""The outbox side of held records in group mode (faultmail/<group>/held/<instance>/<identity>).

Intake publishes a retained held record for each alert it accepts, before the device message
is acknowledged, so that a survivor can mail it if this member dies. The outbox remembers
which alerts have a record out (alerts.mirror, MirrorState) and says which of them no longer
need one, so the group runtime can clear each record (an empty retained message) and then
mark it cleared here. A record is cleared after the alert's final state is committed, never
before: a crash in between costs at most a duplicate with the same Message-ID, never a loss.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from agent.models import AlertState
from agent.outbox._db import Database, translated
from agent.outbox._schema import MirrorState


class MirrorStore(Database):
    def mirror_done(self, limit: int = 500) -> list[tuple[int, str]]:
        """(alert id, identity) of mirrored alerts that are no longer pending (sent, dead,
        silenced), oldest first, at most `limit`.

        Two alerts can share an identity (a device repeating the same payload without a seq)
        and so one record topic: an alert is reported only once no alert with its identity is
        still pending, else clearing its record would clear the other's too.
        """
        held = MirrorState.HELD.value
        with translated("reading held records to clear"):
            rows = self._conn.execute(
                "SELECT a.id, a.identity FROM alerts a "
                f"WHERE a.mirror = {held} AND a.state != '{AlertState.PENDING}' "
                "AND a.identity IS NOT NULL AND NOT EXISTS (SELECT 1 FROM alerts b "
                f"WHERE b.mirror = {held} AND b.identity = a.identity "
                f"AND b.state = '{AlertState.PENDING}') "
                "ORDER BY a.id LIMIT ?",
                (limit,),
            ).fetchall()
            return [(int(alert_id), str(identity)) for alert_id, identity in rows]

    def still_held(self, identities: Sequence[str]) -> set[str]:
        """Which of these identities belong to an alert that is pending with its held record
        due (mirror = HELD): a new alert, or a redelivered one whose record may never have
        reached the broker. A duplicate of an alert already settled needs no record (one
        published for it would outlive it: nothing clears it again)."""
        if not identities:
            return set()
        with translated("reading held records"):
            rows = self._conn.execute(
                "SELECT DISTINCT identity FROM alerts "
                f"WHERE mirror = {MirrorState.HELD.value} AND state = '{AlertState.PENDING}' "
                "AND identity IN (SELECT value FROM json_each(?))",
                (json.dumps(list(identities)),),
            ).fetchall()
            return {str(identity) for (identity,) in rows}

    def mark_mirror_cleared(self, alert_ids: Sequence[int]) -> None:
        """Record that the held records of these alerts were cleared on the broker."""
        if not alert_ids:
            return
        with translated("recording cleared held records"), self._transaction() as conn:
            conn.execute(
                f"UPDATE alerts SET mirror = {MirrorState.CLEARED.value} "
                f"WHERE mirror = {MirrorState.HELD.value} "
                "AND id IN (SELECT value FROM json_each(?))",
                (json.dumps([int(i) for i in alert_ids]),),
            )
