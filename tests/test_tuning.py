"""Process tuning, in fresh interpreters: it only takes effect before torch is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nst_nodes.tuning import configure_process


def tuned_child(mode: str) -> dict:
    code = (
        f"import json, os; from nst_nodes.tuning import configure_process, mmap_threshold; "
        f"applied = configure_process({mode!r}); print(json.dumps({{'applied': applied, "
        "'thp': os.environ.get('THP_MEM_ALLOC_ENABLE'), 'mapped_from': mmap_threshold()}))"
    )
    environment = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_WAIT_POLICY", "THP_MEM_ALLOC_ENABLE", "MALLOC_MMAP_THRESHOLD_")
    }
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=environment)
    return json.loads(output.stdout)


def test_memory_mode_maps_tensors_to_huge_pages_and_speed_mode_keeps_them_in_the_heap() -> None:
    memory, speed, off = tuned_child("memory"), tuned_child("speed"), tuned_child("off")
    assert memory["thp"] == "1" and any("128 KiB" in entry for entry in memory["applied"])
    assert speed["thp"] is None and any("1048576 KiB" in entry for entry in speed["applied"])
    assert "OMP_WAIT_POLICY=PASSIVE" in memory["applied"] and "OMP_WAIT_POLICY=PASSIVE" in speed["applied"]
    assert off == {"applied": [], "thp": None, "mapped_from": 32 << 20}  # glibc's own threshold stops there
    assert (memory["mapped_from"], speed["mapped_from"]) == (128 << 10, 1 << 30)


def test_the_memory_estimate_counts_pooled_tensors_above_mapped_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tensor the heap keeps after use costs more than one handed back to the OS (docs/performance.md#memory)."""
    from nst_nodes import limits, tuning

    conv1_1 = 64 * 512 * 512 * 4  # bytes of the first conv's output at 512x512
    monkeypatch.setattr(tuning, "_mmap_threshold", 1 << 30)
    pooled = limits.network_bytes(512, 512, "conv1_1", True)
    assert pooled == limits.network_bytes(512, 512, "conv1_1", True, "cuda:0") == 3 * conv1_1
    monkeypatch.setattr(tuning, "_mmap_threshold", conv1_1)
    assert limits.network_bytes(512, 512, "conv1_1", True) == 2 * conv1_1
    assert limits.network_bytes(512, 512, "conv1_1", True, "cuda:0") == 3 * conv1_1


def test_the_memory_estimate_counts_the_prepared_weights_of_the_cpu_kernels_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """12x the fp32 weights of the convolutions up to the deepest layer (every candidate plan's while the plans
    are timed, F(4x4)'s 4x per direction among them); 6x in memory mode, which leaves F(4x4) out."""
    from nst_nodes import limits, tuning

    first, second = 3 * 64 * 9 * 4, 64 * 64 * 9 * 4
    monkeypatch.delenv("NST_CONV", raising=False)
    monkeypatch.setattr(tuning, "_mode", "speed")
    assert limits.prepared_weight_bytes("relu1_1", "cpu") == 12 * first
    assert limits.prepared_weight_bytes("relu1_2", "cpu") == 12 * (first + second)
    assert limits.prepared_weight_bytes("relu5_1", "cuda:0") == 0
    monkeypatch.setattr(tuning, "_mode", "memory")
    assert limits.prepared_weight_bytes("relu1_2", "cpu") == 6 * (first + second)
    monkeypatch.setenv("NST_CONV", "winograd_f4")  # forced: it runs, and counts
    assert limits.prepared_weight_bytes("relu1_2", "cpu") == 12 * (first + second)


def test_the_mode_is_the_one_applied_else_nst_tunings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ComfyUI nothing calls configure_process: NST_TUNING still picks the kernels' mode."""
    from nst_nodes import tuning

    monkeypatch.setattr(tuning, "_mode", None)
    monkeypatch.setenv("NST_TUNING", "memory")
    assert tuning.mode() == "memory"
    monkeypatch.setenv("NST_TUNING", "fastest")
    assert tuning.mode() == "speed"
    monkeypatch.setattr(tuning, "_mode", "off")
    assert tuning.mode() == "off"


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="NST_TUNING or --tuning: the mode must be one of"):
        configure_process("fastest")


def test_a_bad_nst_tuning_stops_the_cli_before_anything_runs(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from nst_nodes.app import main

    monkeypatch.setenv("NST_TUNING", "fastest")
    assert main(["run", "graphs/gatys.json"]) == 2
    assert "NST_TUNING" in capsys.readouterr().err
