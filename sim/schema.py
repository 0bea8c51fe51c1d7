"""What every model of the scenario schema shares: no unknown keys, and numbers that are numbers.

A scenario's numbers come from YAML, which writes them as numbers (`jobs: 8`, `rate: 2.5`). pydantic's
lax mode would also take `true` as 1 and `false` as 0 (`workload.jobs: true` ran one job), `8.0` or
"8" as 8 and 1 or "yes" as true: a value the user did not write ran with nothing said. So the models
validate strictly: an integer field takes an integer, a boolean field true or false, a text field
text. A number field (`Float`) takes an integer or a float, finite, and the exponent forms PyYAML
leaves as text (YAML 1.1 reads `40e9` and `1e-6` as strings where YAML 1.2 and JSON read numbers),
never true or false.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

# what PyYAML's YAML 1.1 resolver leaves as a string: an exponent without a '.' or its sign
_EXPONENT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+")


def _yaml_exponent(value: Any) -> Any:
    return float(value) if isinstance(value, str) and _EXPONENT.fullmatch(value) else value


Float = Annotated[float, BeforeValidator(_yaml_exponent), Field(allow_inf_nan=False)]


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo must not be ignored) and values are taken as they are typed."""

    model_config = ConfigDict(extra="forbid", strict=True)


# how the scenario's error messages say what a field takes, by pydantic's error type
EXPECTED = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
            "string_type": "text", "finite_number": "a finite number"}
