"""A stand-in for pynvml used only to test the sampler process's life cycle on machines without a GPU
(start, clean stop on SIGTERM, exit when the parent is gone, death on a lost GPU). It returns constant
readings: no test draws telemetry conclusions from it; those use the real traces in fixtures/telemetry.

FAKE_NVML_FAIL_AFTER=N makes every call fail after N device reads (a GPU that fell off the bus).
"""

import os

NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_TEMPERATURE_GPU = 0
_calls = 0


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


def _tick():
    global _calls
    _calls += 1
    limit = int(os.environ.get("FAKE_NVML_FAIL_AFTER", "0") or 0)
    if limit and _calls > limit:
        raise NVMLError("GPU is lost")


def nvmlInit():
    pass


def nvmlShutdown():
    pass


def nvmlDeviceGetCount():
    return 1


def nvmlDeviceGetHandleByIndex(i):
    if i != 0:
        raise NVMLError("Invalid Argument")
    return i


def nvmlDeviceGetClockInfo(h, kind):
    _tick()
    return 1980 if kind == NVML_CLOCK_SM else 2619


def nvmlDeviceGetPowerUsage(h):
    _tick()
    return 70000


def nvmlDeviceGetTemperature(h, kind):
    _tick()
    return 30


class _Util:
    gpu = 0


class _Mem:
    used = 0
    total = 80 * 2**30


def nvmlDeviceGetUtilizationRates(h):
    _tick()
    return _Util()


def nvmlDeviceGetMemoryInfo(h):
    _tick()
    return _Mem()


def nvmlDeviceGetCurrentClocksEventReasons(h):
    raise NVMLError_NotSupported("Not Supported")


def nvmlDeviceGetTotalEnergyConsumption(h):
    _tick()
    return 1000000


def nvmlDeviceGetName(h):
    return "Fake GPU"


def nvmlDeviceGetUUID(h):
    return "GPU-fake"


def nvmlDeviceGetEnforcedPowerLimit(h):
    return 700000


def nvmlDeviceGetMaxClockInfo(h, kind):
    return 1980
