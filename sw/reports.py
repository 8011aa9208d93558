"""What a command reports (``qpsnn eval``, ``infer``, ``sim``): dataclasses whose ``to_json()`` is the dict the
CLI prints with ``--json``. The field names are those JSON keys, in that order; README commands and users'
scripts read them, so a field is renamed only with them."""
from __future__ import annotations

from dataclasses import fields

OPTIONAL = {"optional": True}  # field(metadata=OPTIONAL): the key is left out of the JSON while the value is None


class Report:
    """Base of the report dataclasses: ``to_json()`` gives their fields as a dict for ``json.dumps``."""

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if not (f.metadata.get("optional") and getattr(self, f.name) is None)}
