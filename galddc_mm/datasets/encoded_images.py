# Copyright (c) galddc_mm contributors. All rights reserved.
"""A batch of encoded image files in one buffer, decoded on the GPU.

``LoadImageBytes`` + ``PackImageBytes`` give every sample its file's
bytes. :func:`encoded_collate` puts a batch's files into one
:class:`EncodedImages` in the data-loader worker: one buffer crosses from
the worker to the training process per batch, where ``pseudo_collate``
sends one tensor per image (at 256 images a batch that was the slowest
part of the GPU-decode path, docs/benchmarks.md).

With ``pin_memory=True`` the DataLoader hands each batch to
:meth:`EncodedImages.pin_memory` in its pin-memory thread of the training
process: there the buffer is pinned and, on a CUDA machine, the files are
decoded with nvJPEG, so decoding overlaps the training step instead of
sitting between two steps. ``GPUDecodeClsDataPreprocessor`` then crops
the decoded images (or decodes them itself where the loader did not).
"""
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import torch
from mmengine.dataset import pseudo_collate
from mmengine.registry import FUNCTIONS
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from .transforms.checked_loading import UnreadableImageError


def is_encoded_file(x) -> bool:
    """Whether ``x`` is an encoded file: a 1-D uint8 tensor."""
    return (isinstance(x, torch.Tensor) and x.dim() == 1
            and x.dtype == torch.uint8)


def sample_names(samples) -> Optional[List[str]]:
    """The files of a batch's data samples, for errors (None without)."""
    if samples is None:
        return None
    return [s.get('img_path', f'sample {i}') for i, s in enumerate(samples)]


def _decode_cpu(data: torch.Tensor, name: str) -> torch.Tensor:
    """Any format torchvision or cv2 reads (CMYK JPEG, PNG, ...)."""
    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError:
        pass
    img = cv2.imdecode(data.numpy(), cv2.IMREAD_COLOR)
    if img is None:
        raise UnreadableImageError(
            name, f'cannot be decoded ({data.numel()} bytes)')
    return torch.from_numpy(img[..., ::-1].copy()).permute(2, 0, 1)


def _indexed(device) -> torch.device:
    """``cuda`` as ``cuda:<current>``: torchvision keeps one nvJPEG decoder
    and builds it anew whenever the device it is asked for compares
    unequal (``cuda`` != ``cuda:0``), which costs more than the decoding
    when two threads alternate."""
    device = torch.device(device)
    if device.type == 'cuda' and device.index is None:
        device = torch.device('cuda', torch.cuda.current_device())
    return device


def _decode(files: Sequence[torch.Tensor], device: torch.device,
            names: Optional[Sequence[str]]) -> List[torch.Tensor]:
    """``decode_jpeg`` of a batch, with the fall-backs of
    :func:`decode_files`, on the current stream."""
    # No warnings.catch_warnings here (torchvision 0.29 deprecates its
    # codecs with a DeprecationWarning, hidden by Python's default
    # filters): it swaps process-wide state, and this runs in the
    # DataLoader's pin-memory thread beside the training thread.
    files = [x.cpu() for x in files]
    try:
        return list(decode_jpeg(files, mode=ImageReadMode.RGB, device=device))
    except torch.OutOfMemoryError:
        raise  # not a file's fault
    except RuntimeError:
        pass  # one bad file fails the batch: decode one by one
    images = []
    for i, x in enumerate(files):
        try:
            img = decode_jpeg(x, mode=ImageReadMode.RGB, device=device)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError:
            name = names[i] if names else f'image {i} of the batch'
            img = _decode_cpu(x, name).to(device)
        images.append(img)
    return images


#: One decoding stream per CUDA device, shared by the threads that decode.
_DECODE_STREAMS: Dict[int, torch.cuda.Stream] = {}


def _decode_stream(device: torch.device) -> torch.cuda.Stream:
    """The decoding stream of ``device``.

    torch hands out streams from a pool, round robin; a high-priority one
    is taken because nothing else here takes those (CUDA graph captures,
    the graph step's warm-ups and NCCL take low-priority ones), so the
    stream's memory pool holds decoded images only (see
    :func:`decode_files_async`). High priority also lets the short
    decoding kernels run between the training's.
    """
    stream = _DECODE_STREAMS.get(device.index)
    if stream is None:
        stream = _DECODE_STREAMS.setdefault(
            device.index, torch.cuda.Stream(device, priority=-1))
    return stream


def decode_files_async(
    files: Sequence[torch.Tensor],
    device: torch.device,
    names: Optional[Sequence[str]] = None
) -> Tuple[List[torch.Tensor], Optional[torch.cuda.Event]]:
    """:func:`decode_files` on a decoding stream, ordered by an event.

    On CUDA the images are allocated and written on a decoding stream,
    never on the training's: nvJPEG writes them from a stream of its own
    as soon as they are allocated, and memory the training stream has
    just freed may still be read by its queued kernels (in the
    pin-memory thread, the training runs on meanwhile). Blocks of the
    decoding stream hold only decoded images, which their users mark with
    ``record_stream`` (:func:`ready_on_current_stream`). The calling
    thread waits for nvJPEG (torchvision synchronises with its decoder),
    the caller's other CUDA streams do not.

    Args:
        files (Sequence[torch.Tensor]): 1-D uint8 CPU tensors.
        device (torch.device): Where to decode.
        names (Sequence[str], optional): File names, for errors.

    Returns:
        tuple: The images and the event after which they are ready (None
        on the CPU). Pass both to :func:`ready_on_current_stream` before
        using the images on another stream.
    """
    device = _indexed(device)
    if device.type != 'cuda':
        return _decode(files, device, names), None
    stream = _decode_stream(device)
    with torch.cuda.stream(stream):
        images = _decode(files, device, names)
        ready = torch.cuda.Event()
        ready.record(stream)
    return images, ready


def ready_on_current_stream(
        images: List[torch.Tensor],
        ready: Optional[torch.cuda.Event]) -> List[torch.Tensor]:
    """Make the current stream wait for decoded images and mark them used
    there (their memory is not reused before that stream is done).

    Args:
        images (list[torch.Tensor]): From :func:`decode_files_async`.
        ready (torch.cuda.Event, optional): Its event; None does nothing.

    Returns:
        list[torch.Tensor]: ``images``.
    """
    if ready is not None and images:
        current = torch.cuda.current_stream(images[0].device)
        current.wait_event(ready)
        for img in images:
            img.record_stream(current)
    return images


def decode_files(files: Sequence[torch.Tensor],
                 device: torch.device,
                 names: Optional[Sequence[str]] = None
                 ) -> List[torch.Tensor]:
    """Decode encoded files to ``(3, H, W)`` uint8 RGB on ``device``.

    ``torchvision.io.decode_jpeg`` on the whole batch (nvJPEG, batched, on
    CUDA, on a stream of its own: :func:`decode_files_async`; libjpeg on
    the CPU). A file nvJPEG cannot decode (CMYK or other unusual JPEGs, a
    PNG named ``.JPEG`` such as one ImageNet training image) makes the
    batched call fail as a whole; the batch is then decoded image by image
    and each file that fails on the device is decoded on the CPU
    (``decode_image``, then cv2) and moved to the device. A file nothing
    decodes raises :class:`~galddc_mm.datasets.UnreadableImageError`
    naming it.

    Args:
        files (Sequence[torch.Tensor]): 1-D uint8 CPU tensors.
        device (torch.device): Where to decode.
        names (Sequence[str], optional): File names, for errors.

    Returns:
        list[torch.Tensor]: RGB images on ``device``, ready for the
        current stream.
    """
    return ready_on_current_stream(*decode_files_async(files, device, names))


class EncodedImages:
    """The encoded files of a batch, one after another in one buffer.

    Args:
        data (torch.Tensor): 1-D uint8, the files one after another.
        lengths (torch.Tensor): ``(B, )`` int64, each file's size.
        names (list[str], optional): The files' paths, for errors.
        decode_in_loader (bool): Decode in :meth:`pin_memory` when CUDA
            is available. Defaults to True.
    """

    def __init__(self,
                 data: torch.Tensor,
                 lengths: torch.Tensor,
                 names: Optional[List[str]] = None,
                 decode_in_loader: bool = True) -> None:
        if data.dim() != 1 or data.dtype != torch.uint8:
            raise TypeError('EncodedImages holds 1-D uint8 bytes, got '
                            f'{data.dtype} of shape {tuple(data.shape)}.')
        if int(lengths.sum()) != data.numel():
            raise ValueError(f'The lengths add up to {int(lengths.sum())} '
                             f'bytes, the buffer has {data.numel()}.')
        self.data = data
        self.lengths = lengths
        self.names = names
        self.decode_in_loader = decode_in_loader
        #: The decoded images, once :meth:`decode` or :meth:`pin_memory`
        #: ran.
        self.images: Optional[List[torch.Tensor]] = None
        self._ready = None  # their event, until first used

    def __len__(self) -> int:
        return self.lengths.numel()

    def __repr__(self) -> str:
        state = ('decoded on ' + str(self.images[0].device)
                 if self.images else 'encoded')
        return (f'{type(self).__name__}({len(self)} files, '
                f'{self.data.numel()} bytes, {state})')

    def files(self) -> List[torch.Tensor]:
        """Each file's bytes: views of the one buffer."""
        return list(torch.split(self.data, self.lengths.tolist()))

    def decode(self, device: torch.device) -> List[torch.Tensor]:
        """The images decoded on ``device``, ready for the current stream.

        Decoded once (here, or already in :meth:`pin_memory`); later calls
        reuse them.

        Args:
            device (torch.device): Where the images are wanted.

        Returns:
            list[torch.Tensor]: ``(3, H, W)`` uint8 RGB images.
        """
        device = _indexed(device)
        if self.images is None or self.images[0].device != device:
            self.images, self._ready = decode_files_async(
                self.files(), device, self.names)
        if self._ready is not None:
            ready_on_current_stream(self.images, self._ready)
            self._ready = None
        return self.images

    def pin_memory(self, device: Optional[str] = None) -> 'EncodedImages':
        """Pin the buffer; on CUDA, decode there too (see the module).

        The DataLoader calls this in its pin-memory thread (with
        ``pin_memory=True`` on a machine with an accelerator), which has
        the training process's current CUDA device set. The images are
        decoded there on the decoding stream (:func:`decode_files_async`);
        :meth:`decode`, in the training thread, makes the training stream
        wait for them. Up to ``prefetch_factor x num_workers`` decoded
        batches wait on the GPU this way (~110 MB per 256 images of
        500 x 375). A batch that fails to decode here is decoded again by
        :meth:`decode`, which raises the error itself (the DataLoader
        would re-raise it as a ``RuntimeError``).

        Args:
            device (str, optional): Ignored (the DataLoader's pin-memory
                device; decoding uses the current CUDA device).

        Returns:
            EncodedImages: This batch.
        """
        self.data = self.data.pin_memory()
        if self.decode_in_loader and torch.cuda.is_available():
            try:
                self.images, self._ready = decode_files_async(
                    self.files(), _indexed('cuda'), self.names)
            except Exception:  # noqa: BLE001 (raised again by decode())
                self.images, self._ready = None, None
        return self


@FUNCTIONS.register_module()
def encoded_collate(data_batch: Sequence[dict],
                    decode_in_loader: bool = True) -> dict:
    """Collate packed byte samples into one :class:`EncodedImages`.

    For the output of ``PackImageBytes``: ``inputs`` become one
    :class:`EncodedImages`, ``data_samples`` a list (as
    ``pseudo_collate``). Other keys are collated by ``pseudo_collate``.

    Args:
        data_batch (Sequence[dict]): Samples with ``inputs`` (1-D uint8)
            and ``data_samples``.
        decode_in_loader (bool): Decode in the DataLoader's pin-memory
            thread (with ``pin_memory=True`` on a CUDA machine). False
            leaves decoding to the data preprocessor. Defaults to True.

    Returns:
        dict: ``inputs`` (:class:`EncodedImages`), ``data_samples`` and
        the other keys.
    """
    files = [sample['inputs'] for sample in data_batch]
    for x in files:
        if not is_encoded_file(x):
            raise TypeError(
                'encoded_collate collates encoded files (1-D uint8 '
                'tensors from LoadImageBytes + PackImageBytes), got '
                f'{type(x).__name__} {getattr(x, "dtype", "")} of shape '
                f'{tuple(getattr(x, "shape", ()))}; use pseudo_collate '
                'or default_collate for decoded images.')
    rest = pseudo_collate([{k: v
                            for k, v in sample.items() if k != 'inputs'}
                           for sample in data_batch])
    rest['inputs'] = EncodedImages(
        torch.cat(files),
        torch.tensor([x.numel() for x in files], dtype=torch.int64),
        names=sample_names(rest.get('data_samples')),
        decode_in_loader=decode_in_loader)
    return rest
