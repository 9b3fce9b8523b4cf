"""The order of the sections: as ``python -m bench`` measures them, and as its README section shows them."""
from __future__ import annotations

from types import ModuleType

from bench.sections import (accuracy, backends, cam_engines, cam_throughput, gpu, input_paths, memory, pacs,
                            pipeline_tuning, profile, profile_decode, ray, single_scan_cold,
                            single_scan_cold_after_warmup, single_scan_memory, single_scan_vgg16_warm,
                            single_scan_warm, stage_split, study, targets, throughput, training_epochs)

# In the order they run: later ones use what earlier ones set (backend objects, the tuned pipeline).
MEASURED: list[ModuleType] = [
    backends, accuracy, single_scan_warm, single_scan_vgg16_warm, single_scan_cold, single_scan_cold_after_warmup,
    pipeline_tuning, throughput, cam_throughput, ray, cam_engines, input_paths, pacs, study, gpu, profile,
    profile_decode, memory, single_scan_memory]

# In the order the README section shows them, after the machine and model lines (``bench.report``).
REPORTED: list[ModuleType] = [
    backends, single_scan_warm, single_scan_cold, single_scan_cold_after_warmup, single_scan_vgg16_warm, throughput,
    cam_engines, memory, single_scan_memory, gpu, profile, profile_decode, stage_split, training_epochs,
    input_paths, targets]
