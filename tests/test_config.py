"""One wording for every settings mistake, whichever config or stage it is in."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from vitslim.compress.quant import QuantConfig
from vitslim.compress.quant.mixed import MixedPrecisionConfig
from vitslim.compress.quant.stage import QuantStage
from vitslim.compress.sparsity import SparsityConfig
from vitslim.compress.tokens import token_config_from_dict
from vitslim.config import check_choice, check_fields, check_flag, check_keys, suggest
from vitslim.errors import UserError
from vitslim.export.stages import ExportStage
from vitslim.export.validate import ValidateStage

#: ``unknown key K[ in WHERE][; did you mean 'X'?] (allowed: ...)``
UNKNOWN_KEY = re.compile(
    r"^unknown key 'samplez'( in [\w ]+)?(; did you mean '\w+'( or '\w+')*\?)? \(allowed: [\w, ]+\)$"
)


@pytest.mark.parametrize(
    ("from_dict", "hint"),
    [
        (QuantStage.from_dict, None),
        (SparsityConfig.from_dict, "dampening"),
        (lambda data: token_config_from_dict({"method": "tome", **data}), None),
        (ExportStage.from_dict, None),
        (ValidateStage.from_dict, None),
        (lambda data: MixedPrecisionConfig.from_dict({"max_drop": 1.0, **data}), None),
        (QuantConfig.from_dict, None),
    ],
)
def test_unknown_keys_read_the_same_everywhere(from_dict: Callable, hint: str | None) -> None:
    with pytest.raises(UserError) as err:
        from_dict({"samplez": 8})
    found = UNKNOWN_KEY.match(str(err.value))
    assert found, str(err.value)
    suggestion = found.group(2)
    assert suggestion is None if hint is None else suggestion.startswith(f"; did you mean '{hint}'")


@pytest.mark.parametrize(
    ("from_dict", "new"),
    [(QuantStage.from_dict, "'tokens_per_site' (tokens kept per site"), (SparsityConfig.from_dict, "'images'")],
)
def test_the_old_samples_key_names_its_new_name(from_dict: Callable, new: str) -> None:
    with pytest.raises(UserError, match=re.escape(f"key 'samples' was renamed: write {new}")):
        from_dict({"samples": 8})


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda: QuantConfig.preset("w8a9"), "quantization preset 'w8a9'"),
        (lambda: QuantStage.from_dict({"search": "progresive"}), "search 'progresive'"),
        (lambda: SparsityConfig("sparsgpt"), "sparsity method 'sparsgpt'"),
        (lambda: token_config_from_dict({"method": "tomee"}), "method 'tomee'"),
        (lambda: MixedPrecisionConfig.from_dict({"max_drop": 1.0, "sensitivity": "kll"}), "sensitivity 'kll'"),
    ],
)
def test_unknown_names_read_the_same_everywhere(make: Callable, what: str) -> None:
    with pytest.raises(UserError, match=rf"^unknown {re.escape(what)}; did you mean '[^']+'.*\? \(available: "):
        make()


def test_helpers() -> None:
    assert suggest("imags", ["images", "search"]) == "; did you mean 'images'?"
    assert suggest("zzz", ["images"]) == ""
    assert check_keys({"images": 1}, ["images"], "quant stage") == {"images": 1}
    with pytest.raises(UserError, match="^quant stage must be a mapping, got list$"):
        check_keys([1], ["images"], "quant stage")
    with pytest.raises(UserError, match=r"^unknown target 'xyz' \(available: cpu, gpu\)$"):
        check_choice("target", "xyz", ("cpu", "gpu"))
    with pytest.raises(UserError, match="^noise_floor must be true or false, got 'yes'$"):
        check_flag("yes", "noise_floor")
    assert check_fields(ValidateStage, {"min_agreement": 0.9}) == {"min_agreement": 0.9}
    with pytest.raises(UserError, match=r"^max_abs_diff must be a number or null, got '1' \(str\)$"):
        check_fields(ValidateStage, {"max_abs_diff": "1"})
