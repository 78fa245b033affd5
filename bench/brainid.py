"""Time and peak memory of Brain-ID synthetic-T1 inference (caio.contrast.brainid.synthesize_t1).

    nice -n 10 python -m bench.brainid --tile 64 --storage float16          # CPU, full size
    python -m bench.brainid --device cuda --tile 0                          # GPU, untiled

Weights are random (the official file is not in the repo; timing and memory do not depend on
the values). The input is the voxelmorph test scan brought to the LUMIR grid (RAS,
160x224x192, [0, 255]). ``--tile 0`` runs the whole volume at once: on CPU only with
``--crop`` (the untiled full-size fp32 forward needs ~15 GB). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import DATA, add_threads_argument
from caio.contrast.brainid import BrainID, BrainIDConfig, synthesize_t1


def lumir_volume(shared: Path, crop: int | None) -> torch.Tensor:
    vol = np.load(shared / "data/voxelmorph_test_scan/test_scan.npz")["vol"]
    vol = np.swapaxes(vol, 1, 2)[::-1, :, ::-1] * 255.0  # LIA -> RAS, 160x224x192
    if crop:
        centre = [n // 2 for n in vol.shape]
        vol = vol[tuple(slice(c - crop // 2, c - crop // 2 + crop) for c in centre)]
    return torch.from_numpy(np.ascontiguousarray(vol, dtype=np.float32))[None, None]


def random_model(seed: int = 0) -> BrainID:
    gen = torch.Generator().manual_seed(seed)
    model = BrainID()
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 1.0 / float(np.sqrt(p[0].numel())) if p.dim() == 5 else 0.05
            p.copy_((1.0 if name.endswith("groupnorm.weight") else 0.0) + scale * torch.randn(p.shape, generator=gen))
    return model.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=DATA.parent)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tile", type=int, default=64, help="tile edge in voxels; 0 = untiled")
    parser.add_argument("--storage", choices=("float32", "float16"), default="float32")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    parser.add_argument("--crop", type=int, default=None, help="centre-crop the volume to this cube (smaller runs)")
    add_threads_argument(parser)
    args = parser.parse_args()
    if args.device == "cpu" and args.tile == 0 and not args.crop:
        parser.error("refusing the untiled full-size CPU forward (~15 GB); pass --tile or --crop")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    volume = lumir_volume(args.shared, args.crop)
    model = random_model().to(device)
    cfg = BrainIDConfig(precision=args.precision, storage=getattr(torch, args.storage))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    wall, cpu = time.time(), time.process_time()
    out = synthesize_t1(model, volume.to(device), tile=args.tile or None, config=cfg)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.time() - wall, time.process_time() - cpu
    result = {
        "device": str(device),
        "shape": list(volume.shape[2:]),
        "tile": args.tile,
        "storage": args.storage,
        "precision": args.precision,
        "threads": args.threads,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3),
        "rss_before_gb": round(rss_before / 1024, 3),
        "out_range": [float(out.min()), float(out.max())],
        "out_shape": list(out.shape),
    }
    if device.type == "cuda":
        result["cuda_peak_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 3)
        result["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
