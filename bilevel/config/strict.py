"""`Strict`: the base of every mapping in a config, shared by the schema's modules."""

import difflib

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError


class Strict(BaseModel):
    """A mapping of known keys: an unknown key is an error that suggests the closest one."""

    # A non-finite float would not survive the resolved record (JSON): refused here.
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data):
        if isinstance(data, dict):
            valid = list(cls.model_fields)
            for key in data:
                if key not in valid:
                    close = difflib.get_close_matches(str(key), valid, n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    raise PydanticCustomError(
                        "unknown_key", "unknown key" + hint + " (valid keys: {valid})",
                        {"key": key, "valid": ", ".join(valid)})
        return data
