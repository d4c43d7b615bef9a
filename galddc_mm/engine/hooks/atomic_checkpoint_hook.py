# Copyright (c) galddc_mm contributors. All rights reserved.
import os.path as osp

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.hooks import CheckpointHook
from mmpretrain.registry import HOOKS

from galddc_mm.utils.checkpoint_safety import (
    ATOMIC_LOCAL_BACKEND,
    POINTER_NAME,
    atomic_destination,
)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` whose files never appear half-written.

    mmengine 0.10.7 writes each checkpoint (``LocalBackend.put``:
    ``open(path, 'wb')``, ``write``) and the ``last_checkpoint`` pointer
    (``open(path, 'w')``) in place, so a kill during a write leaves a
    truncated file under the final name. This hook writes both through
    :func:`~galddc_mm.utils.checkpoint_safety.atomic_destination`: a
    hidden temporary file in the same folder, ``fsync``-ed and renamed
    over the final name, then the folder is synced. A kill leaves the
    previous file (or none) and a ``.<name>.<hex>.tmp`` file that the next
    ``--resume`` removes.

    - **Checkpoints** (``epoch_N.pth``/``iter_N.pth`` and ``best_*``):
      ``Runner.save_checkpoint`` hands the file to mmengine's
      ``save_checkpoint``, which writes it with the file backend named by
      the hook's ``backend_args``. For a local ``out_dir`` and no
      ``backend_args``/``file_client_args`` of its own, the hook asks for
      :class:`~galddc_mm.utils.checkpoint_safety.AtomicLocalBackend`.
      Remote ``out_dir`` (petrel, http, ...) and explicit backend
      arguments keep mmengine's writer: an upload is one request, not a
      stream into the final file.
    - **The pointer**: :meth:`_save_checkpoint_with_step` is mmengine's
      with the pointer written atomically.

    Selected by ``default_hooks.checkpoint.type='AtomicCheckpointHook'`` in
    ``configs/_base_/default_runtime.py``.

    Args: as :class:`mmengine.hooks.CheckpointHook`.
    """

    def before_train(self, runner) -> None:
        super().before_train(runner)
        # ``type(...) is``: a subclass of LocalBackend may write its own way.
        if (self.file_client_args is None and self.backend_args is None
                and type(self.file_backend) is LocalBackend):
            self.backend_args = dict(backend=ATOMIC_LOCAL_BACKEND)
            self.file_backend = get_file_backend(
                self.out_dir, backend_args=self.backend_args)

    def _save_checkpoint_with_step(self, runner, step, meta):
        # mmengine 0.10.7's method; only the pointer write at the end
        # differs (keep the rest in step with upstream).
        if self.max_keep_ckpts > 0:
            # _save_checkpoint and _save_best_checkpoint may call this
            # _save_checkpoint_with_step in one epoch
            if len(self.keep_ckpt_ids) > 0 and self.keep_ckpt_ids[-1] == step:
                pass
            else:
                if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                    _step = self.keep_ckpt_ids.popleft()
                    if is_main_process():
                        ckpt_path = self.file_backend.join_path(
                            self.out_dir, self.filename_tmpl.format(_step))

                        if self.file_backend.isfile(ckpt_path):
                            self.file_backend.remove(ckpt_path)
                        elif self.file_backend.isdir(ckpt_path):
                            # checkpoints saved by deepspeed are directories
                            self.file_backend.rmtree(ckpt_path)

                self.keep_ckpt_ids.append(step)
                runner.message_hub.update_info('keep_ckpt_ids',
                                               list(self.keep_ckpt_ids))

        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir,
                                                     ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)

        runner.save_checkpoint(
            self.out_dir,
            ckpt_filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)

        # Model parallel-like training should involve pulling sharded states
        # from all ranks, but skip the following procedure.
        if not is_main_process():
            return

        # The pointer is always a local file of the work dir; written after
        # the checkpoint it names is complete.
        save_file = osp.join(runner.work_dir, POINTER_NAME)
        with atomic_destination(save_file) as tmp, \
                open(tmp, 'w', encoding='utf-8') as f:
            f.write(self.last_ckpt)  # type: ignore
