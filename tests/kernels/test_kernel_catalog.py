"""Every kernel against its plain reference, driven by kernels/catalog.py.

(a) each kernel, on its row's sample inputs for several seeds, writes and returns what its
reference (tests/kernel_reference.py, resolved by name) does; (b) every public njit function
of kernels/ has a row, so a new kernel without a reference fails here; (c) every kernel that is
not an inline helper has an explicit signature and refuses a wrong dtype, a strided view and a
read-only array with TypeError, without compiling anything new.
"""

from __future__ import annotations

import copy
import importlib
import math
import pkgutil
from pathlib import Path

import numba as nb
import numpy as np
import pytest

import kernels
from kernels import samples
from kernels import units as u
from kernels.catalog import BY_NAME, KERNELS

SEEDS = range(6)  # seed % 3 picks the profile layout: select chain, packed words, table
SIZE = 60


def _resolve(name: str):
    module, fn = name.rsplit(".", 1)
    return getattr(importlib.import_module(module), fn)


def _inline(entry) -> bool:
    return entry.kernel.targetoptions.get("inline") == "always"


def _same(got, want, tol, what):
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want), (what, got, want)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _same(g, w, tol, f"{what}[{i}]")
    elif isinstance(got, np.ndarray) or isinstance(want, np.ndarray):
        got, want = np.asarray(got), np.asarray(want)
        assert got.shape == want.shape, (what, got.shape, want.shape)
        if tol is not None and got.dtype.kind == "f":
            np.testing.assert_allclose(got, want, rtol=tol[0], atol=tol[1], equal_nan=True,
                                       err_msg=what)
        else:
            np.testing.assert_array_equal(got, want, err_msg=what)
    elif isinstance(got, float) or isinstance(want, float):
        g, w = float(got), float(want)
        if math.isnan(w) or math.isnan(g):
            assert math.isnan(g) and math.isnan(w), (what, got, want)
        elif tol is None:
            assert g == w, (what, got, want)
        else:
            assert math.isclose(g, w, rel_tol=tol[0], abs_tol=tol[1]), (what, got, want)
    else:
        assert got == want, (what, got, want)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("entry", KERNELS, ids=lambda k: k.name)
def test_kernel_equals_its_reference(entry, seed):
    args = entry.make(seed, SIZE)
    mine, theirs = copy.deepcopy(args), copy.deepcopy(args)
    got = entry.kernel(*mine)
    want = _resolve(entry.reference)(*theirs)
    if entry.check is not None:
        _resolve(entry.check)(mine, got, theirs, want)
        return
    _same(got, want, entry.tol, "return value")
    for i, (x, y) in enumerate(zip(mine, theirs, strict=True)):
        if i not in entry.scratch and isinstance(x, np.ndarray):
            _same(x, y, entry.tol, f"argument {i}")


def _public_kernels():
    for m in pkgutil.iter_modules(kernels.__path__):
        mod = importlib.import_module(f"kernels.{m.name}")
        for name, obj in vars(mod).items():
            if (isinstance(obj, nb.core.dispatcher.Dispatcher) and not name.startswith("_")
                    and obj.__module__ == mod.__name__):
                yield f"{m.name}.{name}", obj


def test_every_public_kernel_is_in_the_catalog():
    found = dict(_public_kernels())
    assert sorted(found) == sorted(BY_NAME), "add a row (with a reference) to kernels/catalog.py"
    for name, fn in found.items():
        entry = BY_NAME[name]
        assert entry.kernel is fn, name
        assert callable(_resolve(entry.reference)), entry.reference
        assert entry.check is None or callable(_resolve(entry.check)), entry.check
        assert entry.what and entry.basis, name


def test_docs_list_every_kernel():
    text = (Path(__file__).resolve().parents[2] / "docs" / "kernels.md").read_text()
    assert [k.name for k in KERNELS if f"`{k.name}`" not in text] == []


def test_every_kernel_but_the_inline_helpers_is_signed():
    for entry in KERNELS:
        assert entry.signed != _inline(entry), (
            f"{entry.name}: give it an explicit signature (kernels/common.py has the types)")


WRONG = {np.int64: np.int32, np.int32: np.int64, np.int8: np.int16, np.uint8: np.int8,
         np.float64: np.float32, np.float32: np.float64, np.bool_: np.uint8}


def _refused(entry, args, i, bad):
    call = list(copy.deepcopy(args))
    call[i] = bad
    with pytest.raises(TypeError, match="No matching definition"):
        entry.kernel(*call)


@pytest.mark.parametrize("entry", [k for k in KERNELS if not _inline(k)], ids=lambda k: k.name)
def test_signed_kernel_refuses_other_dtypes_and_layouts(entry):
    args = entry.make(1, SIZE)
    arrays = [i for i, a in enumerate(args) if isinstance(a, np.ndarray)]
    if not arrays:  # scalars only: an array where a scalar goes
        _refused(entry, args, 0, np.zeros(1, dtype=np.int64))
    for i in arrays:
        a = args[i]
        _refused(entry, args, i, a.astype(WRONG[a.dtype.type]))
        strided = np.repeat(a, 2, axis=-1)[..., ::2]
        if not strided.flags.c_contiguous:
            _refused(entry, args, i, strided)
        frozen = a.copy()
        frozen.setflags(write=False)
        _refused(entry, args, i, frozen)
    assert len(entry.kernel.signatures) == 1  # nothing new was compiled


def test_samples_reach_the_cases_the_references_are_for():
    """The sample inputs are not vacuous: every tier, every way of reading lines, plans with
    orders, accounts over a cap, reach scans that skip accounts and still find changes."""
    from kernels.common import line_mode
    from kernels.concentration import concentration_fingerprints
    from kernels.liquidation import plan_account
    from kernels.reach import scan_range

    modes, planned, over, skipped, found = set(), 0, 0, 0, 0
    for seed in SEEDS:
        b = samples.toy_book(seed, SIZE)
        assert set(b.tier.tolist()) == set(range(len(u.TIER_NAMES))), seed
        modes.add(line_mode(b.profile_lines)[0])
        planned += plan_account(*samples.make_plan_account(seed, SIZE))[0]
        args = samples.make_concentration_fingerprints(seed, SIZE)
        concentration_fingerprints(*args)
        over += int((args[-2] != 0).sum())
        args = samples.make_scan_range(seed, SIZE)
        k, m = scan_range(*args)
        skipped += (args[1] - args[0]) - m
        found += k - args[20]
    assert modes == {0, 1, 2}
    assert planned > 0 and over > 0 and skipped > 0 and found > 0
