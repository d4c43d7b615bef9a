# Copyright (c) galddc_mm contributors. All rights reserved.
"""Does decoding JPEGs on the GPU overlap a training step?

``decode.py`` times the loaders alone; in a whole run the GPU-decode
path was slower than cv2 although its loader alone was fast enough
(docs/benchmarks.md). This script asks where the overlap is lost, on
the same files, for each decoder (``torchvision``'s nvJPEG, and
nvImageCodec's hardware (``nvimgcodec_hw``: the GPU's JPEG engines) and
hybrid backends when ``nvidia.nvimgcodec`` is installed):

* ``alone``: images/s of the decoder, batches back to back;
* ``thread``: a ResNet-50 step (bf16 autocast on CUDA, channels-last,
  one host sync per step as the training loop's loss logging) beside a
  thread that decodes batch after batch: the step's ms and the thread's
  images/s (the pin-memory-thread design);
* ``gil``: a pure-Python loop beside the decoding thread: its speed
  against the loop alone, and the thread's images/s (whether the thread
  holds, or starves for, the GIL);
* ``workers``: decoding in ``--workers`` DataLoader worker processes
  (``spawn``; the decoded batch reaches the training process as one
  CUDA tensor through CUDA IPC), each batch cropped with the GPU-decode
  preprocessor's ``resample_bilinear`` and trained on: end-to-end
  images/s and the share of it spent waiting for a batch, against the
  step alone. The workers read the files (all that ``--files`` matches)
  from disk, drawn with replacement, so no epoch ends inside the timed
  window.

Rates of a decoding thread count the batches it finished in the window
(``batches`` says how many: one batch in a window of a few seconds is a
starved thread, not a measured rate). ``--device cpu`` runs it all on
the CPU (``decode_jpeg`` with libjpeg), which only checks that it runs::

    python tools/benchmarks/decode_beside_step.py --files 'data/*/*.JPEG' \\
        --out work_dirs/decode_beside_step.json
"""
import argparse
import glob
import json
import os
import os.path as osp
import statistics
import sys
import threading
import time
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torchvision
from torchvision.io import ImageReadMode, decode_jpeg

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

MODES = ('alone', 'thread', 'gil', 'workers')
DECODERS = ('nvjpeg', 'nvimgcodec_hw', 'nvimgcodec_hybrid')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='GPU JPEG decoding alone, beside a training step in '
        'a thread and in worker processes.')
    parser.add_argument('--files', required=True,
                        help='glob of the JPEG files (quote it)')
    parser.add_argument('--batch-size', type=int, default=256)
    parser.add_argument('--steps', type=int, default=30,
                        help='timed training steps per measurement')
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--workers', type=int, default=8,
                        help='worker processes of the workers mode (0: '
                        'decode in this process)')
    parser.add_argument('--modes', default=','.join(MODES))
    parser.add_argument('--decoders', default=','.join(DECODERS),
                        help='those not installed are reported as skipped')
    parser.add_argument('--model', default='resnet50',
                        help='a torchvision classification model')
    parser.add_argument('--image-size', type=int, default=224)
    parser.add_argument('--gil-seconds', type=float, default=2.0,
                        help='length of each pure-Python loop (gil mode)')
    parser.add_argument('--device', default=None,
                        help='cuda or cpu (default: cuda if available)')
    parser.add_argument('--out', default=None, help='write the JSON here')
    return parser.parse_args(argv)


def read_files(paths: List[str]) -> List[bytes]:
    """The bytes of each file."""
    blobs = []
    for path in paths:
        with open(path, 'rb') as f:
            blobs.append(f.read())
    return blobs


class Decoder:
    """One decoder: a batch of encoded files to ``(3, H, W)`` uint8 RGB.

    Args:
        name (str): One of :data:`DECODERS`.
        device (torch.device): Where to decode (nvImageCodec: CUDA only).

    Raises:
        ImportError: nvImageCodec asked for but not installed.
        RuntimeError: nvImageCodec asked for off CUDA.
    """

    def __init__(self, name: str, device: torch.device):
        self.name, self.device = name, device
        self.codec = None
        if name.startswith('nvimgcodec'):
            if device.type != 'cuda':
                raise RuntimeError('nvImageCodec decodes on CUDA only')
            from nvidia import nvimgcodec  # optional: raises if missing
            kind = (nvimgcodec.BackendKind.HW_GPU_ONLY if name.endswith('hw')
                    else nvimgcodec.BackendKind.HYBRID_CPU_GPU)
            self.codec = nvimgcodec.Decoder(
                device_id=device.index or 0, backend_kinds=[kind])
        elif name != 'nvjpeg':
            raise ValueError(f'Unknown decoder {name!r}; one of {DECODERS}')

    def __call__(self, blobs: Sequence[bytes]) -> List[torch.Tensor]:
        if self.codec is None:
            # torchvision's nvJPEG: one decoder per process, on a stream of
            # its own; the call returns once the images are written.
            files = [torch.frombuffer(bytearray(b), dtype=torch.uint8)
                     for b in blobs]
            return list(decode_jpeg(files, mode=ImageReadMode.RGB,
                                    device=self.device))
        stream = torch.cuda.current_stream(self.device).cuda_stream
        images = self.codec.decode(list(blobs), cuda_stream=stream)
        if any(img is None for img in images):
            raise RuntimeError(f'{self.name} could not decode a file')
        # nvImageCodec writes HWC; decode_jpeg's images are planar CHW.
        # Copied to CHW here, so that both decoders do the same work.
        return [torch.as_tensor(img, device=self.device).permute(
            2, 0, 1).contiguous() for img in images]


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


class Step:
    """A training step of a torchvision model, with one host sync.

    Args:
        args (argparse.Namespace): ``model``, ``batch_size``,
            ``image_size``.
        device (torch.device): Where to train (bf16 autocast on CUDA).
    """

    def __init__(self, args, device: torch.device):
        self.device = device
        self.model = getattr(torchvision.models, args.model)().to(
            device, memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1,
                                   momentum=0.9)
        self.labels = torch.randint(0, 1000, (args.batch_size, ),
                                    device=device)
        self.x = torch.randn(args.batch_size, 3, args.image_size,
                             args.image_size, device=device).contiguous(
                                 memory_format=torch.channels_last)
        self.autocast = torch.autocast(device.type, torch.bfloat16,
                                       enabled=device.type == 'cuda')

    def __call__(self, x: Optional[torch.Tensor] = None) -> float:
        x = self.x if x is None else x
        with self.autocast:
            out = self.model(x)
        loss = torch.nn.functional.cross_entropy(
            out.float(), self.labels[:x.size(0)])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item()  # the loop's sync (mmengine logs every loss)

    def ms(self, steps: int, warmup: int) -> float:
        """Mean ms of ``steps`` steps on a fixed batch, after ``warmup``."""
        for _ in range(warmup):
            self()
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self()
        sync(self.device)
        return (time.perf_counter() - t0) / steps * 1e3


class DecodingThread:
    """A thread that decodes batch after batch until the ``with`` block
    ends, on a CUDA stream of its own (what nvImageCodec decodes on;
    torchvision's nvJPEG uses its own stream whatever the caller's).

    An error in the thread is raised again by :meth:`rate` and on leaving
    the block, never read as a low rate.

    Args:
        decoder (Decoder): What decodes.
        batches (list[list[bytes]]): Decoded in turn, over and over.
        device (torch.device): The decoder's device.
    """

    def __init__(self, decoder: Decoder, batches: List[List[bytes]],
                 device: torch.device):
        self.decoder, self.batches, self.device = decoder, batches, device
        self.done: List[Tuple[float, int]] = []  # (finish time, images)
        self.error: Optional[BaseException] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            stream = None
            if self.device.type == 'cuda':
                torch.cuda.set_device(self.device)
                stream = torch.cuda.Stream(self.device)
            while not self._stop.is_set():
                for blobs in self.batches:
                    if self._stop.is_set():
                        break
                    if stream is None:
                        self.decoder(blobs)
                    else:
                        with torch.cuda.stream(stream):
                            self.decoder(blobs)
                        stream.synchronize()
                    self.done.append((time.perf_counter(), len(blobs)))
        except BaseException as exc:  # noqa: BLE001 (raised in the caller)
            self.error = exc

    def _check(self):
        if self.error is not None:
            raise RuntimeError(
                f'The decoding thread failed: {self.error!r}') from self.error

    def __enter__(self):
        self._thread.start()
        time.sleep(0.5)  # past the first batch's set-up
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if exc[0] is None:
            self._check()

    def rate(self, fn: Callable[[], float]) -> Tuple[float, dict]:
        """Run ``fn``; what it returns, and the thread's decoding meanwhile.

        Returns:
            tuple: ``fn()``, and ``img_s`` (images of the batches finished
            in the window, over the window), ``batches`` and ``seconds``.
        """
        t0 = time.perf_counter()
        out = fn()
        t1 = time.perf_counter()
        self._check()
        done = [n for t, n in list(self.done) if t0 <= t <= t1]
        return out, dict(img_s=sum(done) / (t1 - t0), batches=len(done),
                         seconds=t1 - t0)


def python_loop(seconds: float = 2.0) -> float:
    """Iterations per second of a pure-Python loop."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(1000):
            n += 1
    return n / (time.perf_counter() - t0)


# --- the workers mode: what is pickled into the spawned worker processes
# --- lives at module level.
class EncodedFiles(torch.utils.data.Dataset):
    """The bytes of each file, read when asked for.

    Args:
        paths (list[str]): The files.
    """

    def __init__(self, paths: List[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> bytes:
        with open(self.paths[i], 'rb') as f:
            return f.read()


class WorkerCollate:
    """Decodes a batch in the worker into one flat buffer and the sizes.

    Args:
        decoder_name (str): One of :data:`DECODERS`.
        device (str): Where to decode.
    """

    def __init__(self, decoder_name: str, device: str):
        self.decoder_name, self.device = decoder_name, str(device)
        self._decoder = None

    def __call__(self,
                 blobs: Sequence[bytes]) -> Tuple[torch.Tensor, torch.Tensor]:
        if self._decoder is None:
            device = torch.device(self.device)
            if device.type == 'cuda':
                torch.cuda.set_device(device)
            self._decoder = Decoder(self.decoder_name, device)
        images = self._decoder(blobs)
        sizes = torch.tensor([img.shape[-2:] for img in images])
        return torch.cat([img.reshape(-1) for img in images]), sizes


def crop_batch(flat: torch.Tensor,
               sizes: torch.Tensor,
               size: int,
               boxes: Optional[torch.Tensor] = None) -> torch.Tensor:
    """RandomResizedCrop of a flat decoded batch, as the GPU-decode
    preprocessor does it.

    Args:
        flat (torch.Tensor): The images' CHW pixels one after another.
        sizes (torch.Tensor): ``(B, 2)`` ``(H, W)`` of each image.
        size (int): The crops' side.
        boxes (torch.Tensor, optional): ``(B, 4)`` crop boxes ``(top,
            left, height, width)``. Defaults to RandomResizedCrop's.

    Returns:
        torch.Tensor: ``(B, 3, size, size)`` in [0, 1], channels-last.
    """
    # Imported here: the spawned workers import this module, and need
    # torch and torchvision only.
    from galddc_mm.models.data_preprocessors.crop_geometry import (
        resample_bilinear,
        sample_crop_boxes,
    )
    sizes = sizes.long()
    planes = (3 * sizes[:, 0] * sizes[:, 1]).tolist()
    images = [v.view(3, h, w) for v, (h, w) in zip(
        torch.split(flat, planes), sizes.tolist())]
    if boxes is None:
        boxes = sample_crop_boxes(sizes)
    x = resample_bilinear(images, boxes.double(), boxes, (size, size))
    return (x / 255.).contiguous(memory_format=torch.channels_last)


def run_workers(args, name: str, paths: List[str], step: Step,
                device: torch.device) -> dict:
    """The ``workers`` mode of decoder ``name``.

    Returns:
        dict: ``img_s`` and ``iter_ms`` (batch wait, crop and step) of the
        timed steps, and ``waiting``: their share spent waiting for a
        batch.
    """
    batches = args.warmup + args.steps + 2 * max(args.workers, 1) + 1
    sampler = torch.utils.data.RandomSampler(
        paths, replacement=True, num_samples=batches * args.batch_size)
    loader = torch.utils.data.DataLoader(
        EncodedFiles(paths), batch_size=args.batch_size, sampler=sampler,
        num_workers=args.workers, collate_fn=WorkerCollate(name, device),
        multiprocessing_context='spawn' if args.workers else None,
        drop_last=True)
    it = iter(loader)  # one epoch covers the warm-up and the timed steps
    try:
        for _ in range(args.warmup):
            flat, sizes = next(it)
            step(crop_batch(flat, sizes, args.image_size))
        sync(device)
        waits, t0 = 0.0, time.perf_counter()
        for _ in range(args.steps):
            tw = time.perf_counter()
            flat, sizes = next(it)
            waits += time.perf_counter() - tw
            step(crop_batch(flat, sizes, args.image_size))
            del flat
        sync(device)
        elapsed = time.perf_counter() - t0
    finally:
        # Workers may end while batches they sent are still held here:
        # torch warns about CUDA IPC then; nothing is leaked.
        del it, loader
    return dict(img_s=args.batch_size * args.steps / elapsed,
                iter_ms=elapsed / args.steps * 1e3,
                waiting=waits / elapsed)


def main(argv=None) -> dict:
    """Run the modes for each decoder; the results (also as JSON)."""
    args = parse_args(argv)
    modes = [m for m in args.modes.split(',') if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise SystemExit(f'Unknown modes {unknown}; choose from {MODES}.')
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit('--steps must be >= 1 and --warmup >= 0.')
    device = torch.device(args.device or (
        'cuda' if torch.cuda.is_available() else 'cpu'))
    if device.type == 'cuda':
        device = torch.device('cuda', device.index or 0)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    paths = sorted(glob.glob(args.files))
    # In memory for the modes of this process: 8 batches.
    blobs = read_files(paths[:8 * args.batch_size])
    batches = [blobs[i:i + args.batch_size]
               for i in range(0, len(blobs), args.batch_size)]
    batches = [b for b in batches if len(b) == args.batch_size]
    if not batches:
        raise SystemExit(f'{args.files!r} matches {len(paths)} files, '
                         f'fewer than one batch ({args.batch_size}).')
    res = dict(device=str(device), files=len(paths),
               mean_kb=statistics.mean(map(len, blobs)) / 1e3,
               torch=torch.__version__, torchvision=torchvision.__version__,
               args=vars(args), results={})
    if device.type == 'cuda':
        res['gpu'] = torch.cuda.get_device_name(device)
    step = Step(args, device)
    res['results']['step_alone_ms'] = step.ms(args.steps, args.warmup)
    print(f'step alone: {res["results"]["step_alone_ms"]:.1f} ms '
          f'({args.model}, batch {args.batch_size})', flush=True)
    loop_alone = (python_loop(args.gil_seconds)
                  if 'gil' in modes else None)
    for name in [d for d in args.decoders.split(',') if d]:
        row = res['results'][name] = {}
        try:
            decoder = Decoder(name, device)
            for blobs_ in batches[:2]:  # set-up; a file it cannot decode
                decoder(blobs_)
        except (ImportError, RuntimeError) as exc:
            row['skipped'] = f'{type(exc).__name__}: {exc}'
            print(f'[{name}] skipped: {row["skipped"]}', flush=True)
            continue
        sync(device)
        if 'alone' in modes:
            t0 = time.perf_counter()
            for blobs_ in batches:
                decoder(blobs_)
            sync(device)
            row['alone_img_s'] = (len(batches) * args.batch_size /
                                  (time.perf_counter() - t0))
        if 'thread' in modes:
            with DecodingThread(decoder, batches, device) as th:
                ms, rate = th.rate(lambda: step.ms(args.steps, 1))
            row['thread'] = dict(step_ms=ms, decode=rate)
        if 'gil' in modes:
            with DecodingThread(decoder, batches, device) as th:
                loop, rate = th.rate(lambda: python_loop(args.gil_seconds))
            row['gil'] = dict(python_loop=loop / loop_alone, decode=rate)
        if 'workers' in modes:
            row['workers'] = run_workers(args, name, paths, step, device)
        print(f'[{name}] {json.dumps(row)}', flush=True)
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(res, f, indent=2)
        print(f'Written to {args.out}')
    return res


if __name__ == '__main__':
    main()
