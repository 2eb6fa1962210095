"""The blind-selection rule of benchmarks/blind_row.py: validation only, most compression within the allowance."""

from __future__ import annotations

from benchmarks.blind_row import choose


def _c(tolerance: float, compression: float, qualifies: bool) -> dict:
    return {"tolerance_pct": tolerance, "compression_architecture": compression, "qualifies": qualifies}


def test_the_most_compressed_qualifying_candidate_is_chosen():
    chosen, met = choose([_c(0.2, 9.0, True), _c(0.4, 11.0, True), _c(0.6, 13.0, False)])
    assert met and chosen["tolerance_pct"] == 0.4


def test_a_tie_goes_to_the_smaller_tolerance():
    chosen, met = choose([_c(0.6, 11.0, True), _c(0.4, 11.0, True)])
    assert met and chosen["tolerance_pct"] == 0.4


def test_without_a_qualifying_candidate_the_smallest_tolerance_is_taken_and_flagged():
    chosen, met = choose([_c(0.4, 11.0, False), _c(0.2, 9.0, False)])
    assert not met and chosen["tolerance_pct"] == 0.2


def test_another_seed_writes_beside_seed_zero_never_over_it():
    from benchmarks.blind_row import seed_suffix

    assert seed_suffix(0) == "" and seed_suffix(2) == "_seed2"
