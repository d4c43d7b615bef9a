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
  images/s, against the step alone.

Runs on the CPU too (``decode_jpeg`` with libjpeg; ``workers`` then
sends CPU tensors), which only checks that it runs::

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

import torch
import torchvision
from torchvision.io import ImageReadMode, decode_jpeg

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO not in sys.path:  # workers are spawned: a fresh interpreter
    sys.path.insert(0, REPO)

from galddc_mm.models.data_preprocessors.crop_geometry import (  # noqa: E402
    resample_bilinear,
    sample_crop_boxes,
)

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
    parser.add_argument('--workers', type=int, default=8)
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


def read_files(pattern: str, limit: int):
    paths = sorted(glob.glob(pattern))[:limit]
    if not paths:
        raise SystemExit(f'No file matches {pattern!r}.')
    blobs = []
    for path in paths:
        with open(path, 'rb') as f:
            blobs.append(f.read())
    return blobs


class Decoder:
    """One decoder: a batch of encoded files -> ``(3, H, W)`` uint8."""

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

    def __call__(self, blobs):
        if self.codec is None:
            files = [torch.frombuffer(bytearray(b), dtype=torch.uint8)
                     for b in blobs]
            return list(decode_jpeg(files, mode=ImageReadMode.RGB,
                                    device=self.device))
        stream = torch.cuda.current_stream(self.device).cuda_stream
        images = self.codec.decode(list(blobs), cuda_stream=stream)
        if any(img is None for img in images):
            raise RuntimeError(f'{self.name} could not decode a file')
        # HWC interleaved: the layout decode_jpeg's CHW images view.
        return [torch.as_tensor(img, device=self.device).permute(2, 0, 1)
                for img in images]


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


class Step:
    """A training step of a torchvision model with one host sync."""

    def __init__(self, args, device):
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

    def __call__(self, x=None):
        x = self.x if x is None else x
        with self.autocast:
            out = self.model(x)
        loss = torch.nn.functional.cross_entropy(
            out.float(), self.labels[:x.size(0)])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item()  # the loop's sync (mmengine logs every loss)

    def ms(self, steps, warmup):
        for _ in range(warmup):
            self()
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self()
        sync(self.device)
        return (time.perf_counter() - t0) / steps * 1e3


class DecodingThread:
    """Decodes batch after batch on a stream of its own until stopped,
    counting images."""

    def __init__(self, decoder, batches, device):
        self.decoder, self.batches, self.device = decoder, batches, device
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
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
                self.count += len(blobs)

    def __enter__(self):
        self._thread.start()
        time.sleep(0.5)  # past the first batch's set-up
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def rate(self, seconds_fn):
        """Run ``seconds_fn`` (returns None); images/s meanwhile."""
        c0, t0 = self.count, time.perf_counter()
        out = seconds_fn()
        return out, (self.count - c0) / (time.perf_counter() - t0)


def python_loop(seconds=2.0):
    """Iterations per second of a pure-Python loop."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(1000):
            n += 1
    return n / (time.perf_counter() - t0)


# --- the workers mode: everything here is pickled by name into spawned
# --- worker processes, so it lives at module level.
class EncodedFiles(torch.utils.data.Dataset):

    def __init__(self, blobs):
        self.blobs = blobs

    def __len__(self):
        return len(self.blobs)

    def __getitem__(self, i):
        return self.blobs[i]


class WorkerCollate:
    """Decodes a batch in the worker into one flat buffer + sizes."""

    def __init__(self, decoder_name, device):
        self.decoder_name, self.device = decoder_name, str(device)
        self._decoder = None

    def __call__(self, blobs):
        if self._decoder is None:
            device = torch.device(self.device)
            if device.type == 'cuda':
                torch.cuda.set_device(device)
            self._decoder = Decoder(self.decoder_name, device)
        images = self._decoder(blobs)
        sizes = torch.tensor([img.shape[-2:] for img in images])
        return torch.cat([img.reshape(-1) for img in images]), sizes


def crop_batch(flat, sizes, size, boxes=None):
    """RandomResizedCrop of a flat decoded batch, as the GPU-decode
    preprocessor does it (``boxes``: ``(B, 4)`` crop boxes; default:
    drawn as RandomResizedCrop's)."""
    sizes = sizes.long()
    planes = (3 * sizes[:, 0] * sizes[:, 1]).tolist()
    images = [v.view(3, h, w) for v, (h, w) in zip(
        torch.split(flat, planes), sizes.tolist())]
    if boxes is None:
        boxes = sample_crop_boxes(sizes)
    x = resample_bilinear(images, boxes.double(), boxes, (size, size))
    return (x / 255.).contiguous(memory_format=torch.channels_last)


def cycle(loader):
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def run_workers(args, name, blobs, step, device):
    loader = torch.utils.data.DataLoader(
        EncodedFiles(blobs), batch_size=args.batch_size, shuffle=True,
        num_workers=args.workers, collate_fn=WorkerCollate(name, device),
        multiprocessing_context='spawn', persistent_workers=True,
        drop_last=True)

    it = cycle(loader)
    waits = []
    try:
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                sync(device)
                t0, waits = time.perf_counter(), []
            tw = time.perf_counter()
            flat, sizes = next(it)
            waits.append(time.perf_counter() - tw)
            step(crop_batch(flat, sizes, args.image_size))
            del flat
        sync(device)
        elapsed = time.perf_counter() - t0
    finally:
        del it
        # Workers end while the batches they sent may still be held
        # here: torch warns about CUDA IPC then; nothing is leaked.
        del loader
    return dict(img_s=args.batch_size * args.steps / elapsed,
                step_ms=elapsed / args.steps * 1e3,
                waiting=sum(waits) / elapsed)


def main(argv=None):
    args = parse_args(argv)
    modes = [m for m in args.modes.split(',') if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise SystemExit(f'Unknown modes {unknown}; choose from {MODES}.')
    device = torch.device(args.device or (
        'cuda' if torch.cuda.is_available() else 'cpu'))
    if device.type == 'cuda':
        device = torch.device('cuda', device.index or 0)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    blobs = read_files(args.files, 8 * args.batch_size)
    batches = [blobs[i:i + args.batch_size]
               for i in range(0, len(blobs), args.batch_size)]
    batches = [b for b in batches if len(b) == args.batch_size]
    if not batches:
        raise SystemExit(f'Fewer files than one batch ({args.batch_size}).')
    res = dict(device=str(device), files=len(blobs),
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
        except (ImportError, RuntimeError) as exc:
            row['skipped'] = f'{type(exc).__name__}: {exc}'
            print(f'[{name}] skipped: {row["skipped"]}', flush=True)
            continue
        for blobs_ in batches[:2]:
            decoder(blobs_)
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
            row['thread'] = dict(step_ms=ms, decode_img_s=rate)
        if 'gil' in modes:
            with DecodingThread(decoder, batches, device) as th:
                loop, rate = th.rate(
                    lambda: python_loop(args.gil_seconds))
            row['gil'] = dict(python_loop=loop / loop_alone,
                              decode_img_s=rate)
        if 'workers' in modes:
            row['workers'] = run_workers(args, name, blobs, step, device)
        print(f'[{name}] {json.dumps(row)}', flush=True)
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(res, f, indent=2)
        print(f'Written to {args.out}')
    return res


if __name__ == '__main__':
    main()
