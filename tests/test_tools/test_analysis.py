# Copyright (c) galddc_mm contributors. All rights reserved.
"""The analysis scripts of ``tools/analysis`` and ``WorkDir``.

One tiny GALD-DC run on DigitsLT (3 + 1 + 1 epochs, about 15 s) is shared
by the class ``TestScriptsOnARun``; every script runs on its outputs and
must write valid images. The pieces of maths behind the plots are tested
on fixed inputs against values computed by hand.
"""
import json
import os
import os.path as osp
import sys
import tempfile
from unittest import TestCase

import numpy as np
import torch
from conftest import REPO_ROOT, run_tool
from PIL import Image

from galddc_mm.utils import WorkDir, load_per_class_accuracy

sys.path.insert(0, osp.join(REPO_ROOT, 'tools', 'analysis'))

import generation_quality  # noqa: E402
import latent_map  # noqa: E402
import per_class_accuracy  # noqa: E402
import radius_calibration  # noqa: E402
import training_curves  # noqa: E402

GALDDC_CONFIG = osp.join(REPO_ROOT, 'configs', 'galddc', 'r20_digitslt.py')
TINY = [
    'train_cfg.stages.0.epochs=3', 'train_cfg.stages.1.epochs=1',
    'train_cfg.stages.1.repeat=2', 'train_cfg.stages.2.epochs=1',
    # A tiny stage 2 samples poor latents: report, but go on to stage 3.
    'custom_hooks.0.gate=warn',
    # Keep the end-of-stage-2 checkpoint (epoch 4) for generation_quality.
    'default_hooks.checkpoint.max_keep_ckpts=-1'
]


def assert_png(test: TestCase, path: str, min_size=(200, 150)) -> None:
    test.assertTrue(osp.isfile(path), path)
    test.assertGreater(osp.getsize(path), 0)
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        test.assertEqual(img.format, 'PNG')
        test.assertGreaterEqual(img.size[0], min_size[0])
        test.assertGreaterEqual(img.size[1], min_size[1])


def assert_svg_pdf(test: TestCase, stem: str) -> None:
    with open(stem + '.svg', encoding='utf-8') as f:
        test.assertIn('<svg', f.read(2000))
    with open(stem + '.pdf', 'rb') as f:
        test.assertEqual(f.read(5), b'%PDF-')


def write_json(path: str, obj) -> None:
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(obj, f)


class TestScriptsOnARun(TestCase):
    """Each script on the outputs of one tiny three-stage run."""

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        cls.work_dir = osp.join(cls._tmp.name, 'run')
        cls.out = osp.join(cls._tmp.name, 'figs')
        run_tool([
            'tools/train.py', GALDDC_CONFIG, '--work-dir', cls.work_dir,
            '--cfg-options', *TINY
        ])

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def test_work_dir_reader(self):
        wd = WorkDir(self.work_dir)
        self.assertTrue(wd.config().endswith(
            osp.join('vis_data', 'config.py')))
        # last_checkpoint names the final epoch (3 + 1 + 1).
        self.assertEqual(osp.basename(wd.checkpoint('last')), 'epoch_5.pth')
        self.assertRegex(
            osp.basename(wd.checkpoint('best')),
            r'^best_accuracy_top1_epoch_\d\.pth$')
        train, val = wd.scalars()
        self.assertEqual([r['iter'] for r in train],
                         sorted(r['iter'] for r in train))
        self.assertEqual(max(r['epoch'] for r in train), 5)
        self.assertIn('accuracy/top1', val[-1])
        test = wd.final_metrics('test')
        self.assertTrue(0 <= test['accuracy/top1'] <= 100)
        rows = load_per_class_accuracy(wd.per_class_accuracy_file('test'))
        self.assertEqual([r['train_count'] for r in rows],
                         [110, 78, 56, 40, 29, 20, 14, 10, 7, 5])
        self.assertEqual(len(wd.generation_report()['per_class']), 10)

    def test_latent_map_pca_png_svg_pdf(self):
        stem = osp.join(self.out, 'latent_map')
        paths = latent_map.main([
            self.work_dir, '--out', stem + '.png', '--num-per-class', '10',
            '--format', 'png', 'svg', 'pdf'
        ])
        self.assertEqual(paths, [stem + '.png', stem + '.svg',
                                 stem + '.pdf'])
        assert_png(self, stem + '.png')
        assert_svg_pdf(self, stem)

    def test_latent_map_tsne_subset_current_encoder(self):
        out = osp.join(self.out, 'latent_tsne.png')
        latent_map.main([
            self.work_dir, '--method', 'tsne', '--classes', '0', '9',
            '--num-per-class', '8', '--encoder', 'current', '--out', out
        ])
        assert_png(self, out)

    def test_latent_map_bad_class(self):
        with self.assertRaisesRegex(ValueError, r'out of range.*10 classes'):
            latent_map.main([self.work_dir, '--classes', '12', '--out',
                             osp.join(self.out, 'x.png')])

    def test_bad_sources(self):
        from analysis_utils import resolve_run
        config = WorkDir(self.work_dir).config()
        with self.assertRaisesRegex(ValueError, 'also pass --checkpoint'):
            resolve_run(config)
        with self.assertRaisesRegex(FileNotFoundError, 'neither a work dir'):
            resolve_run(osp.join(self.work_dir, 'missing.py'))
        # A checkpoint saved before stage 2: its geometry is empty.
        ckpt = torch.load(WorkDir(self.work_dir).checkpoint('last'),
                          map_location='cpu', weights_only=False)
        ckpt['state_dict']['geometry.initialized'].zero_()
        early = osp.join(self.out, 'stage1.pth')
        os.makedirs(self.out, exist_ok=True)
        torch.save(ckpt, early)
        with self.assertRaisesRegex(RuntimeError, 'before the diffusion'):
            radius_calibration.main(
                [config, '--checkpoint', early, '--out',
                 osp.join(self.out, 'never.png')])

    def test_radius_calibration_from_model_and_report(self):
        out = osp.join(self.out, 'radius.png')
        radius_calibration.main(
            [self.work_dir, '--out', out, '--num-per-class', '5'])
        assert_png(self, out)
        report = osp.join(self.work_dir, 'generation_report.json')
        stem = osp.join(self.out, 'radius_report')
        radius_calibration.main(
            [report, '--out', stem + '.png', '--format', 'pdf', 'png'])
        assert_png(self, stem + '.png')
        with open(stem + '.pdf', 'rb') as f:
            self.assertEqual(f.read(5), b'%PDF-')

    def test_generation_quality_reproduces_the_hook(self):
        # The end-of-stage-2 checkpoint (3 + 1 epochs) and the hook's
        # settings: the tool's numbers are the run's generation report.
        ckpt = osp.join(self.work_dir, 'epoch_4.pth')
        config = WorkDir(self.work_dir).config()
        out = osp.join(self.out, 'gen_quality.png')
        report = generation_quality.main(
            [config, ckpt, '--out', out, '--device', 'cpu'])
        assert_png(self, out)
        with open(osp.join(self.work_dir, 'generation_report.json')) as f:
            hook = json.load(f)
        with open(osp.join(self.out, 'gen_quality.json')) as f:
            self.assertEqual(json.load(f)['num_per_class'],
                             hook['num_per_class'])
        for band in ('head', 'tail'):
            for key in ('gen_radius', 'gen_acc', 'fd', 'precision',
                        'recall'):
                ours, theirs = (report['summary'][band].get(key),
                                hook['summary'][band].get(key))
                if theirs is None:
                    self.assertIsNone(ours)
                else:
                    self.assertAlmostEqual(ours, theirs, delta=1e-3 *
                                           max(1.0, abs(theirs)))
        self.assertEqual(report['gate']['passed'], hook['gate']['passed'])

    def test_radius_rows_follow_the_calibration_formula(self):
        from analysis_utils import load_model, resolve_run
        config, ckpt, _ = resolve_run(self.work_dir)
        model, _ = load_model(config, ckpt)
        with open(osp.join(self.work_dir, 'generation_report.json')) as f:
            report = json.load(f)
        rows = radius_calibration.rows_from_model(model, report=report)
        geometry = model.geometry
        lam, r_prior = geometry.lam, float(geometry.r_prior)
        for row, rep in zip(rows, report['per_class']):
            expected = (row['r_obs'] if row['train_count'] >= 20 else
                        lam * row['r_obs'] + (1 - lam) * r_prior)
            self.assertAlmostEqual(row['r_cal'], expected, places=4)
            self.assertEqual(row['split'],
                             'head' if row['train_count'] >= 20 else 'tail')
            # With a report, the generated radius is the report's.
            self.assertAlmostEqual(row['gen_radius'], rep['gen_radius'],
                                   places=3)

    def test_per_class_accuracy_two_runs(self):
        stem = osp.join(self.out, 'per_class')
        test_file = WorkDir(self.work_dir).per_class_accuracy_file('test')
        per_class_accuracy.main([
            f'GALD-DC={self.work_dir}', test_file.replace('.json', '.csv'),
            '--out', stem + '.png', '--format', 'png', 'svg'
        ])
        assert_png(self, stem + '.png')
        with open(stem + '.svg', encoding='utf-8') as f:
            self.assertIn('<svg', f.read(2000))

    def test_training_curves(self):
        stem = osp.join(self.out, 'curves')
        training_curves.main(
            [self.work_dir, '--out', stem + '.png', '--format', 'png',
             'svg', 'pdf'])
        assert_png(self, stem + '.png')
        assert_svg_pdf(self, stem)

    def test_tensorboard_option(self):
        out = osp.join(self.out, 'tb_curves.png')
        logdir = osp.join(self.out, 'tb')
        argv = [self.work_dir, '--out', out, '--tensorboard', logdir]
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            # Not installed: a clear message saying what to install, after
            # the image files were written.
            with self.assertRaisesRegex(ImportError,
                                        'pip install tensorboard'):
                training_curves.main(argv)
            assert_png(self, out)
        else:
            training_curves.main(argv)
            events = [f for f in os.listdir(logdir)
                      if f.startswith('events.out.tfevents')]
            self.assertEqual(len(events), 1)

    def test_scripts_run_from_the_command_line(self):
        out = osp.join(self.out, 'cli_curves.png')
        proc = run_tool([
            'tools/analysis/training_curves.py', self.work_dir, '--out', out
        ])
        self.assertIn(f'saved {out}', proc.stdout)
        assert_png(self, out)


class TestWorkDir(TestCase):
    """``WorkDir`` on a hand-made tree."""

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.root = self._tmp.name

    def tearDown(self):
        self._tmp.cleanup()

    def touch(self, *parts, text=''):
        path = osp.join(self.root, *parts)
        os.makedirs(osp.dirname(path), exist_ok=True)
        with open(path, 'w', encoding='utf-8') as f:
            f.write(text)
        return path

    def test_missing_dir(self):
        with self.assertRaisesRegex(FileNotFoundError, 'does not exist'):
            WorkDir(osp.join(self.root, 'nope'))

    def test_checkpoints(self):
        wd = WorkDir(self.root)
        with self.assertRaisesRegex(FileNotFoundError, 'No epoch_N.pth'):
            wd.checkpoint('last')
        with self.assertRaisesRegex(FileNotFoundError, 'best checkpoint'):
            wd.checkpoint('best')
        with self.assertRaisesRegex(ValueError, 'kind must be one of'):
            wd.checkpoint('first')
        for n in (9, 10, 8):
            self.touch(f'epoch_{n}.pth')
        self.touch('best_accuracy_top1_epoch_3.pth')
        self.touch('best_accuracy_top1_epoch_7.pth')
        # Numeric, not lexicographic order (10 > 9).
        self.assertEqual(wd.checkpoint('last'),
                         osp.join(self.root, 'epoch_10.pth'))
        self.assertEqual(wd.checkpoint('best'),
                         osp.join(self.root,
                                  'best_accuracy_top1_epoch_7.pth'))
        # last_checkpoint wins; a stale absolute path (moved work dir)
        # falls back to the same file name here.
        self.touch('last_checkpoint', text='/elsewhere/run/epoch_9.pth')
        self.assertEqual(wd.checkpoint('last'),
                         osp.join(self.root, 'epoch_9.pth'))

    def test_config_prefers_the_training_run(self):
        wd = WorkDir(self.root)
        self.touch('r20.py')
        self.assertEqual(wd.config(), osp.join(self.root, 'r20.py'))
        train = self.touch('20240101_000000', 'vis_data', 'config.py')
        self.touch('20240101_000000', 'vis_data', 'scalars.json')
        # A later tools/test.py run dumps a config but logs no scalars.
        test = self.touch('20240102_000000', 'vis_data', 'config.py')
        self.assertEqual(wd.config(), train)
        os.remove(train)
        self.assertEqual(wd.config(), test)
        self.touch('other.py')
        os.remove(test)
        with self.assertRaisesRegex(FileNotFoundError, 'one \\*.py file'):
            wd.config()

    def test_scalars_of_a_resumed_run(self):
        old = [dict(epoch=1, iter=5, step=5, loss=3.0),
               dict(epoch=2, iter=10, step=10, loss=2.0),
               {'accuracy/top1': 10.0, 'step': 2}]
        new = [dict(epoch=2, iter=10, step=10, loss=1.5),
               dict(epoch=3, iter=15, step=15, loss=1.0),
               {'accuracy/top1': 20.0, 'step': 2},
               {'accuracy/top1': 30.0, 'step': 3}]
        for run, records in (('20240101_000000', old),
                             ('20240102_000000', new)):
            self.touch(run, 'vis_data', 'scalars.json',
                       text='\n'.join(json.dumps(r) for r in records))
        train, val = WorkDir(self.root).scalars()
        # The resumed run's record of iteration 10 replaces the old one.
        self.assertEqual([(r['iter'], r['loss']) for r in train],
                         [(5, 3.0), (10, 1.5), (15, 1.0)])
        self.assertEqual([(r['step'], r['accuracy/top1']) for r in val],
                         [(2, 20.0), (3, 30.0)])

    def test_final_metrics_and_per_class_files(self):
        wd = WorkDir(self.root)
        self.assertIsNone(wd.final_metrics('test'))
        write_json(osp.join(self.root, '20240101_000000',
                            'final_metrics.json'),
                   dict(metrics=dict(val={'accuracy/top1': 50.0},
                                     test={'accuracy/top1': 40.0})))
        write_json(osp.join(self.root, '20240102_000000',
                            'final_metrics.json'),
                   dict(metrics=dict(val={'accuracy/top1': 60.0})))
        # The newest run that has the split.
        self.assertEqual(wd.final_metrics('val'), {'accuracy/top1': 60.0})
        self.assertEqual(wd.final_metrics('test'), {'accuracy/top1': 40.0})
        with self.assertRaisesRegex(FileNotFoundError, 'tools/test.py'):
            wd.per_class_accuracy_file('test')
        with self.assertRaisesRegex(FileNotFoundError, 'vis_data/config'):
            wd.config()
        with self.assertRaisesRegex(FileNotFoundError,
                                    'GenerationReportHook'):
            wd.generation_report()

    def test_per_class_json_and_csv_agree(self):
        classes = [
            dict(class_idx=1, class_name='b', train_count=5, band='few',
                 group='tail', num_eval=4, num_correct=3, accuracy=75.0),
            dict(class_idx=0, class_name='a', train_count=50,
                 band='medium', group=None, num_eval=0, num_correct=0,
                 accuracy=None),
        ]
        path = osp.join(self.root, 'x_per_class_accuracy.json')
        write_json(path, dict(metrics={}, classes=classes))
        csv_text = ('class_idx,class_name,train_count,band,group,num_eval,'
                    'num_correct,accuracy\n1,b,5,few,tail,4,3,75.0\n'
                    '0,a,50,medium,,0,0,\n')
        csv_path = self.touch('x_per_class_accuracy.csv', text=csv_text)
        from_json = load_per_class_accuracy(path)
        self.assertEqual([r['class_idx'] for r in from_json], [0, 1])
        self.assertEqual(load_per_class_accuracy(csv_path), from_json)
        with self.assertRaisesRegex(ValueError, 'neither a .json nor'):
            load_per_class_accuracy(self.touch('x.txt'))


class TestLatentMapMaths(TestCase):

    def test_select_classes(self):
        counts = np.array([10, 100, 5, 50, 0])
        # K <= 20: every class with images, most frequent first.
        np.testing.assert_array_equal(
            latent_map.select_classes(counts, tau=20), [1, 3, 0, 2])
        np.testing.assert_array_equal(
            latent_map.select_classes(counts, 20, classes=[2, 1]), [1, 2])
        with self.assertRaisesRegex(ValueError, 'no training images'):
            latent_map.select_classes(counts, 20, classes=[4])
        # K = 30: 20 head classes (counts 100..81), 10 tail (10..1).
        counts = np.concatenate([np.arange(100, 80, -1), np.arange(10, 0,
                                                                  -1)])
        chosen = latent_map.select_classes(counts, tau=20, max_classes=6)
        # 3 head spread over ranks 0, 9.5->10, 19 and 3 tail over 20..29.
        np.testing.assert_array_equal(chosen, [0, 10, 19, 20, 24, 29])
        # Fewer tail classes than half: the head fills up.
        counts = np.concatenate([np.full(25, 100), [3]])
        chosen = latent_map.select_classes(counts, tau=20, max_classes=4)
        self.assertEqual(len(chosen), 4)
        self.assertEqual(chosen[-1], 25)

    def test_pca_projection_matches_svd(self):
        rng = np.random.default_rng(0)
        real = rng.normal(size=(40, 5)) * np.array([5, 2, 1, .5, .1])
        gen = rng.normal(size=(7, 5))
        real_2d, gen_2d, extra, labels = latent_map.project(real, gen)
        self.assertIsNone(extra)
        # Reference: principal axes of the centred real data by SVD.
        mean = real.mean(0)
        _, s, vt = np.linalg.svd(real - mean, full_matrices=False)
        ref_real = (real - mean) @ vt[:2].T
        ref_gen = (gen - mean) @ vt[:2].T
        signs = np.sign((real_2d * ref_real).sum(0))
        np.testing.assert_allclose(real_2d * signs, ref_real, atol=1e-8)
        np.testing.assert_allclose(gen_2d * signs, ref_gen, atol=1e-8)
        ratio = s[0]**2 / (s**2).sum() * 100
        self.assertIn(f'{ratio:.0f}%', labels[0])
        with self.assertRaisesRegex(ValueError, 'method must be one of'):
            latent_map.project(real, gen, method='umap')


class TestRadiusMaths(TestCase):

    def test_generated_radius(self):
        latents = torch.tensor([[0., 0.], [2., 0.], [0., 0.], [0., 4.],
                                [3., 4.]])
        labels = torch.tensor([0, 0, 2, 2, 2])
        radius = radius_calibration.generated_radius(latents, labels, 3)
        # Class 0: mean (1, 0), distances 1, 1. Class 2: mean (1, 8/3),
        # distances computed one by one below. Class 1: no latents.
        mean2 = np.array([1., 8. / 3.])
        ref2 = np.mean([np.linalg.norm(np.array(p) - mean2)
                        for p in ([0., 0.], [0., 4.], [3., 4.])])
        self.assertAlmostEqual(float(radius[0]), 1.0, places=6)
        self.assertTrue(torch.isnan(radius[1]))
        self.assertAlmostEqual(float(radius[2]), ref2, places=5)

    def test_report_without_rows(self):
        with self.assertRaisesRegex(ValueError, 'no per_class rows'):
            radius_calibration.rows_from_report(dict(summary={}))


class TestPerClassMaths(TestCase):
    ROWS = [
        dict(class_idx=0, train_count=150, accuracy=90.0),
        dict(class_idx=1, train_count=101, accuracy=80.0),
        dict(class_idx=2, train_count=100, accuracy=70.0),
        dict(class_idx=3, train_count=20, accuracy=60.0),
        dict(class_idx=4, train_count=19, accuracy=10.0),
        dict(class_idx=5, train_count=3, accuracy=None),
    ]

    def test_band_accuracy(self):
        acc = per_class_accuracy.band_accuracy(self.ROWS, 100, 20)
        # many: 150, 101; medium: 100, 20 (inclusive); few: 19 (class 5
        # has no evaluation sample and is left out everywhere).
        self.assertEqual(acc, dict(many=85.0, medium=65.0, few=10.0,
                                   all=62.0))
        acc = per_class_accuracy.band_accuracy(self.ROWS, 140, 100)
        self.assertEqual(acc, dict(many=90.0, medium=75.0, few=35.0,
                                   all=62.0))
        with self.assertRaisesRegex(ValueError, 'must not exceed'):
            per_class_accuracy.band_accuracy(self.ROWS, 10, 20)

    def test_run_labels(self):
        with tempfile.TemporaryDirectory() as root:
            run = osp.join(root, 'ce', 'seed1')
            path = osp.join(run, '20240101_000000',
                            'test_per_class_accuracy.json')
            write_json(path, dict(classes=[]))
            self.assertEqual(per_class_accuracy.parse_run(run),
                             ('ce/seed1', path))
            self.assertEqual(per_class_accuracy.parse_run(f'CE={path}'),
                             ('CE', path))
            self.assertEqual(per_class_accuracy.parse_run(path)[0],
                             'ce/seed1')
            with self.assertRaisesRegex(FileNotFoundError,
                                        'val_per_class_accuracy'):
                per_class_accuracy.parse_run(run, split='val')
            with self.assertRaisesRegex(FileNotFoundError, 'neither'):
                per_class_accuracy.parse_run(osp.join(root, 'missing'))


class TestTrainingCurveMaths(TestCase):

    def test_stage_spans(self):
        spans = training_curves.stage_spans(
            dict(stages=[
                dict(name='representation', epochs=0),
                dict(name='diffusion', epochs=10),
                dict(name='finetune', epochs=5)
            ]))
        self.assertEqual(spans, [('diffusion', 0, 10), ('finetune', 10, 15)])
        self.assertEqual(training_curves.stage_spans(dict(max_epochs=60)),
                         [('training', 0, 60)])
        self.assertEqual(training_curves.stage_spans(None, num_epochs=4),
                         [('training', 0, 4)])
        with self.assertRaisesRegex(ValueError, 'neither stages'):
            training_curves.stage_spans(dict())

    def test_epoch_positions(self):
        # Epochs 1-2: 6 iterations, logged at 5 and 6 (end of epoch).
        # Epoch 3: 300 iterations (a latent stage), logged at 12, 112, 312.
        # Epoch 5 follows an epoch without log lines (4): equal lengths.
        records = [
            dict(epoch=1, iter=5), dict(epoch=1, iter=6),
            dict(epoch=2, iter=9), dict(epoch=2, iter=12),
            dict(epoch=3, iter=112), dict(epoch=3, iter=312),
            dict(epoch=5, iter=712)
        ]
        x = training_curves.epoch_positions(records)
        np.testing.assert_allclose(
            x, [5 / 6, 1, 1.5, 2, 2 + 100 / 300, 3, 5])
        # Epoch 5 ends at 712, epoch 3 at 312: 200 iterations per epoch,
        # so a record at 612 sits half-way through epoch 5.
        x = training_curves.epoch_positions(
            records[:-1] + [dict(epoch=5, iter=612), dict(epoch=5,
                                                          iter=712)])
        self.assertAlmostEqual(x[-2], 4.5)

    def test_split_and_stale_losses(self):
        spans = [('representation', 0, 2), ('diffusion', 2, 3)]
        records = [
            dict(epoch=1, iter=1, loss=2.0),
            dict(epoch=2, iter=2, loss=1.0),
            dict(epoch=3, iter=3, loss=0.5, loss_ldm=0.4, loss_margin=0.0),
            dict(epoch=3, iter=4, loss=0.3, loss_ldm=0.2, loss_margin=0.0),
            dict(epoch=9, iter=5, loss=0.1),
        ]
        parts = training_curves.split_by_stage(records, spans)
        self.assertEqual([[r['iter'] for r in p] for p in parts],
                         [[1, 2], [3, 4]])
        self.assertEqual(training_curves.loss_keys(parts[1], parts[0]),
                         ['loss', 'loss_ldm', 'loss_margin'])
        # mmengine keeps logging a finished stage's losses with their last
        # value: such keys are dropped, a key that moves is kept.
        later = [dict(epoch=4, iter=6, loss=0.9, loss_ldm=0.2,
                      loss_margin=0.0, loss_cls=1.0),
                 dict(epoch=4, iter=7, loss=0.8, loss_ldm=0.2,
                      loss_margin=0.0, loss_cls=0.9)]
        self.assertEqual(
            training_curves.loss_keys(later, parts[0] + parts[1]),
            ['loss', 'loss_cls'])
