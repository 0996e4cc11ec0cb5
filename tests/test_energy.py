"""Energy meters: one contract over every meter, then each meter's own hazards.

Hardware is faked at the library boundary: a fake `pynvml` module (raising the
real `pynvml.NVMLError` classes) and a fake powercap tree in tmp_path, so these
tests run anywhere and can fail for the reasons the real meters would.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pynvml as real_pynvml
import pytest
from fakes.fake_pynvml import FakeGpu, FakeNvml

from collect.energy import (
    COUNTER_NOT_TICKED,
    METERS,
    SHORTER_THAN_COUNTER_UPDATE,
    EstimateMeter,
    Meter,
    NvmlMeter,
    RaplMeter,
    check_comparable,
    choose_meter,
    make_meter,
)
from collect.energy.nvml import COUNTER_RESET, POWER_POLLED
from policy.errors import MeterError, MixedEnergyError, UsageError

REPO = Path(__file__).resolve().parents[1]
RAPL_MAX_UJ = 262_143_328_850


# ---------------------------------------------------------------- fakes ----


def install_nvml(monkeypatch: pytest.MonkeyPatch, gpus: list[FakeGpu], **kw: int) -> FakeNvml:
    fake = FakeNvml(gpus, **kw)
    monkeypatch.setitem(sys.modules, "pynvml", fake.module)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return fake


class FakePowercap:
    """A /sys/class/powercap tree: package-0 with core and dram sub-zones."""

    def __init__(self, root: Path, max_uj: int = RAPL_MAX_UJ) -> None:
        self.root = root
        self.max_uj = max_uj
        self.raw: dict[str, int] = {}
        for zone, name in [("intel-rapl:0", "package-0"), ("intel-rapl:0:0", "core"), ("intel-rapl:0:1", "dram")]:
            (root / zone).mkdir(parents=True)
            (root / zone / "name").write_text(name + "\n")
            (root / zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
            self.set_uj(zone, 1_000)

    def set_uj(self, zone: str, value: int) -> None:
        self.raw[zone] = value % self.max_uj
        # one temporary name per writer thread: a power-drawing thread and the test may write at once
        tmp = self.root / zone / f"energy_uj.{threading.get_ident()}.tmp"
        tmp.write_text(f"{self.raw[zone]}\n")
        os.replace(tmp, self.root / zone / "energy_uj")  # atomic, like a sysfs read

    def add_j(self, zone: str, joules: float) -> None:
        self.set_uj(zone, self.raw[zone] + round(joules * 1e6))


@dataclass
class Harness:
    """A meter plus a way to make its hardware spend energy."""

    meter: Meter
    exact: bool
    spend: Callable[[float], None]  # make the metered thing use this many joules
    draw: Callable[[float], None]  # start a constant background draw, in W


def _burn_cpu_s(seconds: float) -> None:
    t0 = time.process_time()
    while time.process_time() - t0 < seconds:
        pass


@pytest.fixture(params=["estimate", "nvml", "rapl"])
def harness(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Harness]:
    stop = threading.Event()
    threads: list[threading.Thread] = []
    if request.param == "estimate":
        # 1000 W per core makes 1 J cost 1 ms of CPU; the estimate can only over-count (test overhead).
        meter: Meter = EstimateMeter(watts_per_core=1000.0)
        h = Harness(meter, exact=False, spend=lambda j: _burn_cpu_s(j / 1000.0), draw=lambda w: None)
    elif request.param == "nvml":
        gpu = FakeGpu(uuid="GPU-aaaa-0000", energy_mj=7_000)
        install_nvml(monkeypatch, [gpu])

        def spend(j: float) -> None:
            gpu.energy_mj += round(j * 1000)

        def draw(w: float) -> None:
            gpu.born_s, gpu.power_w = time.perf_counter(), w

        h = Harness(NvmlMeter(), exact=True, spend=spend, draw=draw)
    else:
        cap = FakePowercap(tmp_path)

        def draw(w: float) -> None:
            def run() -> None:
                t_last = time.perf_counter()
                while not stop.wait(0.005):
                    now = time.perf_counter()
                    cap.add_j("intel-rapl:0", 0.8 * w * (now - t_last))
                    cap.add_j("intel-rapl:0:1", 0.2 * w * (now - t_last))
                    t_last = now

            threads.append(threading.Thread(target=run, daemon=True))
            threads[-1].start()

        h = Harness(
            RaplMeter(root=tmp_path, wrap_poll_s=0), exact=True, spend=lambda j: cap.add_j("intel-rapl:0", j), draw=draw
        )
    yield h
    stop.set()
    for t in threads:
        t.join()
    h.meter.close()


def assert_joules(h: Harness, got: float, expected: float) -> None:
    if h.exact:
        assert got == pytest.approx(expected, abs=1e-6)
    else:
        assert expected <= got <= expected + 2.0


# ------------------------------------------------------------- contract ----


def test_window_reports_joules_with_its_meter_and_source(harness: Harness) -> None:
    m = harness.meter
    m.begin_window("w")
    harness.spend(5.0)
    out = m.end_window("w")
    assert_joules(harness, out.energy_j, 5.0)
    assert out.meter == m.name and out.source == m.source and out.name == "w"
    assert out.duration_s >= 0


def test_nested_windows_contain_the_inner_energy(harness: Harness) -> None:
    m = harness.meter
    m.begin_window("outer")
    harness.spend(1.0)
    m.begin_window("inner")
    harness.spend(2.0)
    inner = m.end_window("inner")
    harness.spend(3.0)
    outer = m.end_window("outer")
    assert_joules(harness, inner.energy_j, 2.0)
    assert_joules(harness, outer.energy_j, 6.0)
    assert outer.energy_j >= inner.energy_j and outer.duration_s >= inner.duration_s


def test_overlapping_windows_each_count_the_overlap(harness: Harness) -> None:
    m = harness.meter
    m.begin_window("a")
    harness.spend(1.0)
    m.begin_window("b")
    harness.spend(2.0)
    a = m.end_window("a")
    harness.spend(4.0)
    b = m.end_window("b")
    assert_joules(harness, a.energy_j, 3.0)
    assert_joules(harness, b.energy_j, 6.0)


def test_consecutive_windows_are_monotonic_and_add_up(harness: Harness) -> None:
    m = harness.meter
    m.begin_window("all")
    parts = []
    for i in range(5):
        m.begin_window(f"part{i}")
        harness.spend(0.5)
        parts.append(m.end_window(f"part{i}"))
    total = m.end_window("all")
    assert all(p.energy_j >= 0 for p in parts)
    assert sum(p.energy_j for p in parts) <= total.energy_j + 1e-9
    assert_joules(harness, total.energy_j, 2.5)


def test_unknown_duplicate_and_empty_window_names_are_rejected(harness: Harness) -> None:
    m = harness.meter
    with pytest.raises(UsageError, match="never begun"):
        m.end_window("nope")
    m.begin_window("w")
    with pytest.raises(UsageError, match="already open"):
        m.begin_window("w")
    with pytest.raises(UsageError, match="non-empty"):
        m.begin_window("")
    m.end_window("w")
    with pytest.raises(UsageError, match="never begun"):
        m.end_window("w")


def test_idle_baseline_is_kept_beside_raw_joules(harness: Harness) -> None:
    m = harness.meter
    harness.draw(50.0)
    idle_w = m.measure_idle(0.3)
    assert idle_w == m.idle_power_w >= 0
    if harness.exact:
        assert idle_w == pytest.approx(50.0, rel=0.35)  # the counter steps every 100 ms on NVML
    m.begin_window("w")
    harness.spend(5.0)
    out = m.end_window("w")
    assert out.idle_energy_j == pytest.approx(idle_w * out.duration_s)
    assert out.energy_above_idle_j == pytest.approx(max(out.energy_j - out.idle_energy_j, 0.0))


def test_idle_baseline_needs_a_positive_duration(harness: Harness) -> None:
    with pytest.raises(UsageError, match="positive"):
        harness.meter.measure_idle(0)


# ----------------------------------------------------------------- nvml ----


def test_nvml_millijoules_become_joules_summed_over_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = [FakeGpu("GPU-a", energy_mj=100), FakeGpu("GPU-b", energy_mj=200)]
    install_nvml(monkeypatch, gpus)
    with NvmlMeter() as m:
        m.begin_window("w")
        gpus[0].energy_mj += 5000
        gpus[1].energy_mj += 1500
        out = m.end_window("w")
    assert out.energy_j == pytest.approx(6.5)
    assert out.detail == pytest.approx({"gpu0_j": 5.0, "gpu1_j": 1.5})


def test_nvml_counter_wrap_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = FakeGpu("GPU-a", energy_mj=2**64 - 1000)
    install_nvml(monkeypatch, [gpu])
    with NvmlMeter() as m:
        m.begin_window("w")
        gpu.energy_mj = 4000
        out = m.end_window("w")
    assert out.energy_j == pytest.approx(5.0)
    assert COUNTER_RESET not in out.flags


def test_nvml_counter_reset_is_flagged_not_counted_as_a_wrap(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = FakeGpu("GPU-a", energy_mj=10**9)
    install_nvml(monkeypatch, [gpu])
    with NvmlMeter() as m:
        m.begin_window("w")
        gpu.energy_mj = 500
        out = m.end_window("w")
    assert out.energy_j == pytest.approx(0.5)
    assert COUNTER_RESET in out.flags


def test_nvml_counter_that_did_not_tick_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = [FakeGpu("GPU-a", energy_mj=100), FakeGpu("GPU-b", energy_mj=100)]
    install_nvml(monkeypatch, gpus)
    with NvmlMeter() as m:
        m.begin_window("still")
        out = m.end_window("still")
        assert out.energy_j == 0
        assert COUNTER_NOT_TICKED in out.flags and SHORTER_THAN_COUNTER_UPDATE in out.flags
        # one GPU ticking is not enough: the other's zero is not a measured zero
        m.begin_window("half")
        gpus[0].energy_mj += 10
        assert COUNTER_NOT_TICKED in m.end_window("half").flags


def test_nvml_window_longer_than_update_with_ticks_has_no_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = FakeGpu("GPU-a", energy_mj=100)
    install_nvml(monkeypatch, [gpu])
    with NvmlMeter() as m:
        m.begin_window("w")
        time.sleep(0.12)
        gpu.energy_mj += 1234
        out = m.end_window("w")
    assert out.flags == ()
    assert out.energy_j == pytest.approx(1.234)


def test_nvml_idle_baseline_refuses_a_dead_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    install_nvml(monkeypatch, [FakeGpu("GPU-a", energy_mj=100)])
    with NvmlMeter() as m, pytest.raises(MeterError, match="did not change"):
        m.measure_idle(0.15)


def _three_gpus(monkeypatch: pytest.MonkeyPatch) -> list[FakeGpu]:
    gpus = [FakeGpu("GPU-aaaa-1111"), FakeGpu("GPU-bbbb-2222"), FakeGpu("GPU-cccc-3333")]
    install_nvml(monkeypatch, gpus)
    return gpus


def test_nvml_respects_cuda_visible_devices_indices(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = _three_gpus(monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    with NvmlMeter() as m:
        assert m.nvml_indices == [2, 0]
        m.begin_window("w")
        gpus[1].energy_mj += 9_000  # hidden GPU: must not count
        gpus[2].energy_mj += 2_000
        gpus[0].energy_mj += 1_000
        out = m.end_window("w")
    assert out.energy_j == pytest.approx(3.0)
    assert set(out.detail) == {"gpu2_j", "gpu0_j"}


def test_nvml_gpu_indices_are_cuda_visible_indices(monkeypatch: pytest.MonkeyPatch) -> None:
    _three_gpus(monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    with NvmlMeter(gpu_indices=[1]) as m:
        assert m.nvml_indices == [0]
    with pytest.raises(UsageError, match="visible"):
        NvmlMeter(gpu_indices=[2])


@pytest.mark.parametrize(
    ("visible", "indices"),
    [("GPU-bbbb", [1]), ("cccc-3333,0", [2, 0]), ("1,7,0", [1]), ("0,GPU-zzzz,2", [0]), ("1,1", [1])],
)
def test_nvml_cuda_visible_devices_follow_cuda_parsing(
    monkeypatch: pytest.MonkeyPatch, visible: str, indices: list[int]
) -> None:
    _three_gpus(monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with NvmlMeter() as m:
        assert m.nvml_indices == indices


@pytest.mark.parametrize("visible", ["", "-1", "9"])
def test_nvml_no_visible_gpu_names_the_fix(monkeypatch: pytest.MonkeyPatch, visible: str) -> None:
    fake = FakeNvml([FakeGpu("GPU-a")])
    monkeypatch.setitem(sys.modules, "pynvml", fake.module)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with pytest.raises(MeterError, match="--meter estimate"):
        NvmlMeter()
    assert fake.init_count == 0  # NVML was shut down again


def test_nvml_missing_library_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with pytest.raises(MeterError, match="nvidia-ml-py.*--meter estimate"):
        NvmlMeter()


def test_nvml_without_driver_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    install_nvml(monkeypatch, [], init_error=real_pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    with pytest.raises(MeterError, match="--meter estimate") as info:
        NvmlMeter()
    assert isinstance(info.value.__cause__, real_pynvml.NVMLError)


def test_nvml_polls_power_where_the_counter_is_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    install_nvml(monkeypatch, [FakeGpu("GPU-old", energy_mj=None, power_w=100.0)])
    with NvmlMeter(poll_interval_s=0.01) as m:
        assert m.polling
        m.begin_window("w")
        time.sleep(0.25)
        out = m.end_window("w")
    assert out.energy_j == pytest.approx(100.0 * out.duration_s, rel=0.1)
    assert POWER_POLLED in out.flags and COUNTER_NOT_TICKED not in out.flags


def test_nvml_close_shuts_nvml_down(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = install_nvml(monkeypatch, [FakeGpu("GPU-a", energy_mj=None, power_w=1.0)])
    m = NvmlMeter(poll_interval_s=0.01)
    assert fake.init_count == 1
    m.close()
    m.close()
    assert fake.init_count == 0


class _FakeCuda:
    def __init__(self) -> None:
        self.synced: list[int] = []

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def device_count(self) -> int:
        return 2

    def synchronize(self, device: int) -> None:
        self.synced.append(device)


def test_nvml_syncs_cuda_only_when_torch_is_already_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    install_nvml(monkeypatch, [FakeGpu("GPU-a")])
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    with NvmlMeter() as m:
        m.begin_window("w")
        m.end_window("w")
        assert "torch" not in sys.modules  # the meter never imports torch itself
        cuda = _FakeCuda()
        monkeypatch.setitem(sys.modules, "torch", type(sys)("torch"))
        sys.modules["torch"].cuda = cuda  # type: ignore[attr-defined]
        m.begin_window("w")
        m.end_window("w", sync=False)
        assert cuda.synced == [0, 1]


# ----------------------------------------------------------------- rapl ----


def test_rapl_microjoules_become_joules_per_package_and_dram(tmp_path: Path) -> None:
    cap = FakePowercap(tmp_path)
    with RaplMeter(root=tmp_path, wrap_poll_s=0) as m:
        assert m.zones == ["package-0", "dram-0"]  # core is inside the package: not counted twice
        m.begin_window("w")
        cap.set_uj("intel-rapl:0", cap.raw["intel-rapl:0"] + 5_000_000)
        cap.add_j("intel-rapl:0:1", 1.0)
        cap.add_j("intel-rapl:0:0", 3.0)
        out = m.end_window("w")
    assert out.energy_j == pytest.approx(6.0)
    assert out.detail == pytest.approx({"package-0_j": 5.0, "dram-0_j": 1.0})
    assert out.source == "measured" and out.meter == "rapl"


def test_rapl_wrap_around_adds_the_max_range(tmp_path: Path) -> None:
    cap = FakePowercap(tmp_path, max_uj=10_000_000)
    cap.set_uj("intel-rapl:0", 9_000_000)
    with RaplMeter(root=tmp_path, wrap_poll_s=0) as m:
        m.begin_window("w")
        cap.set_uj("intel-rapl:0", 2_000_000)  # 1 J to the wrap, 2 J after it
        out = m.end_window("w")
    assert out.energy_j == pytest.approx(3.0)


def test_rapl_background_reads_catch_every_wrap_of_a_long_window(tmp_path: Path) -> None:
    cap = FakePowercap(tmp_path, max_uj=10_000_000)
    with RaplMeter(root=tmp_path, wrap_poll_s=0.01) as m:
        m.begin_window("w")
        for _ in range(3):  # three nearly full wraps between the window's own reads
            cap.add_j("intel-rapl:0", 8.0)
            time.sleep(0.1)
        out = m.end_window("w")
    assert out.energy_j == pytest.approx(24.0)


def test_rapl_permission_error_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakePowercap(tmp_path)
    real_read_text = pathlib.Path.read_text

    def read_text(self: Path, *args: object, **kwargs: object) -> str:
        if self.name == "energy_uj":  # what a non-root user gets on kernels after 2020
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pathlib.Path, "read_text", read_text)
    with pytest.raises(MeterError, match=r"run as root or `sudo chmod a\+r .*energy_uj`, or use --meter estimate"):
        RaplMeter(root=tmp_path)


def test_rapl_missing_tree_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(MeterError, match="no RAPL package zone.*--meter estimate"):
        RaplMeter(root=tmp_path / "absent")


def test_rapl_missing_energy_file_names_the_fix(tmp_path: Path) -> None:
    FakePowercap(tmp_path)
    (tmp_path / "intel-rapl:0" / "energy_uj").unlink()
    with pytest.raises(MeterError, match="missing.*--meter estimate"):
        RaplMeter(root=tmp_path)


def test_rapl_counter_that_did_not_tick_is_flagged(tmp_path: Path) -> None:
    FakePowercap(tmp_path)
    with RaplMeter(root=tmp_path, wrap_poll_s=0) as m:
        m.begin_window("w")
        out = m.end_window("w")
    assert out.energy_j == 0 and COUNTER_NOT_TICKED in out.flags


# ----------------------------------------------------------------- auto ----


def test_auto_falls_back_to_estimate_without_gpu_or_rapl(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    install_nvml(monkeypatch, [], init_error=real_pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    meter, reason = choose_meter(rapl_root=tmp_path)
    assert isinstance(meter, EstimateMeter) and meter.source == "estimated"
    assert "chose estimate" in reason and "nvml unavailable" in reason and "rapl unavailable" in reason


def test_auto_prefers_a_readable_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    install_nvml(monkeypatch, [FakeGpu("GPU-a")])
    FakePowercap(tmp_path)
    meter, reason = choose_meter(rapl_root=tmp_path)
    meter.close()
    assert meter.name == "nvml" and reason.startswith("chose nvml")


def test_auto_uses_rapl_when_no_gpu_is_readable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    install_nvml(monkeypatch, [FakeGpu("GPU-a")])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    FakePowercap(tmp_path)
    meter, reason = choose_meter(rapl_root=tmp_path)
    meter.close()
    assert meter.name == "rapl" and "nvml unavailable" in reason


def test_auto_from_the_registry_records_the_concrete_meter(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    install_nvml(monkeypatch, [], init_error=real_pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    meter = make_meter("auto", rapl_root=tmp_path)
    meter.begin_window("w")
    assert meter.end_window("w").meter == "estimate"  # "auto" never appears in a record


# -------------------------------------------------------- registry etc. ----


def test_every_registered_meter_is_built_by_name_and_unknown_names_list_the_registry() -> None:
    for name, factory in METERS.items():
        assert callable(factory), name  # the CLI's choices and make_meter read this one dict
    with pytest.raises(UsageError, match="unknown meter 'zeus', known: " + ", ".join(sorted(METERS))):
        make_meter("zeus")


def test_mixing_measured_and_estimated_joules_names_the_flag() -> None:
    check_comparable(["measured", "measured"])
    check_comparable(["estimated"])
    check_comparable([])
    with pytest.raises(MixedEnergyError, match="--allow-mixed-energy"):
        check_comparable(["measured", "estimated", "measured"])
    check_comparable(["measured", "estimated"], allow_mixed=True)
    with pytest.raises(UsageError, match="unknown energy source 'guessed'"):
        check_comparable(["guessed"])


def test_energy_package_imports_nothing_a_bare_gpu_machine_lacks() -> None:
    # scripts/gpu_check.py runs where only torch, transformers and nvidia-ml-py are installed.
    # numpy comes with transformers (policy/ needs it); anything else third-party would break the check.
    code = (
        "import sys; import collect.energy; "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    site_machinery = {"__main__", "_distutils_hack"}
    third_party = {m for m in proc.stdout.split() if m not in site_machinery and not m.startswith("__editable__")}
    assert third_party <= {"collect", "policy", "numpy"}, f"collect.energy pulls in {sorted(third_party)}"


def test_nvml_lost_gpu_and_closed_meter_raise_meter_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = install_nvml(monkeypatch, [FakeGpu("GPU-a", energy_mj=100)])
    m = NvmlMeter()
    m.begin_window("w")
    fake.gpus[0].energy_mj = None  # the counter now answers NVMLError_NotSupported, as a lost GPU might
    with pytest.raises(MeterError, match="stopped answering.*--meter estimate"):
        m.end_window("w")
    m.close()
    with pytest.raises(MeterError, match="closed"):
        m.begin_window("again")
