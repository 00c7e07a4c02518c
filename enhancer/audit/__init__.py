"""Can these heatmaps be trusted? Sanity, faithfulness, repeatability and localisation checks of an enhanced
dataset's maps, with bootstrap confidence intervals and a verdict per check.

Usage::

    enhancer audit enhanced/ --checkpoint best.pt --out audit/ [--data ROOT] [--masks DIR | --boxes FILE] \\
        [--samples 64] [--second-checkpoint other-seed.pt]

    from enhancer.audit.run import run_audit
    result = run_audit(AuditSpec(dataset="enhanced/", checkpoint="best.pt", out="audit/"))

Modules, one job each: ``inputs`` (the audited samples from the shards), ``maps`` (the injectable map function,
Grad-CAM by default), ``similarity`` (SSIM, Spearman on the device), ``randomisation`` (cascading model
randomisation), ``imputation`` (ROAD's noisy linear imputation), ``faithfulness`` (deletion / insertion, ROAD,
confidence change), ``localisation`` (Otsu mIoU, pointing game, energy), ``bootstrap`` (percentile intervals),
``checks`` (each check with its baseline and verdict), ``report`` / ``figures`` (audit.json, audit.md, PNGs),
``run`` (the job), ``per_class`` (datasets of maps per class: the classes, their score, the document),
``phantoms`` (test subjects with known lesions).

``audit.json`` keys (stable: ``enhancer report`` reads them). A figure ``f`` comes with ``f_ci`` = [low, high], its
95% percentile bootstrap interval (1,000 seeded resamples over the samples); undefined values are null. Verdicts
are ``"pass"``, ``"fail"`` or ``"not run"``.

- top level: ``verdict`` (pass when every check that ran passed), ``verdicts`` {check: verdict}, ``dataset``,
  ``checkpoint``, ``checkpoint_sha256``, ``second_checkpoint``, ``samples``, ``indices`` (dataset positions),
  ``seed``, ``resamples``, ``device``, ``maps`` (the map function), ``gradcam`` (the dataset's settings),
  ``seconds`` {check: s, total}, ``figures`` [PNG names], ``spec``, provenance (package version, code revision).
- ``randomisation``: ``stages`` [{``name``, ``modules``, ``ssim``, ``ssim_ci``, ``spearman``, ``spearman_ci``,
  ``baseline_ssim_hi``, ``verdict``}] (cascading, top first: the maps after re-initialising this stage and all
  above it, compared with the originals; a stage passes when its ``ssim`` <= ``baseline_ssim_hi``);
  ``baseline_ssim``, ``baseline_ssim_ci``, ``baseline_ssim_hi`` (= its upper bound), ``baseline_spearman``,
  ``baseline_spearman_ci``, ``baseline_spearman_hi`` (random pairs of different samples'
  maps), ``pairs``, ``n``, ``verdict`` (pass: the last stage's ``ssim`` <= ``baseline_ssim_hi``).
- ``deletion``, ``insertion``: ``auc``, ``auc_ci``, ``random_auc``, ``random_auc_ci`` (random maps of the same
  smoothness), ``auc_minus_random``, ``auc_minus_random_ci`` (paired), ``better`` ("lower" / "higher"),
  ``fractions``, ``curve``, ``random_curve`` (mean score per fraction), ``baseline`` (blur / mean), ``score``,
  ``n``, ``verdict`` (pass: the paired difference's interval excludes 0 on the better side).
- ``road``: ``morf``, ``lerf``, ``random_morf``, ``random_lerf`` (mean score change over ``percentiles``, each with
  ``_ci``), ``combined`` = (lerf - morf) / 2 with ``random_combined``, ``combined_minus_random`` and their ``_ci``,
  ``better``, ``percentiles``, ``noise``, ``score``, ``n``, ``verdict`` (on ``combined`` against random maps).
- ``confidence``: ``change`` = score(x * map) - score(x) with ``random_change``, ``change_minus_random``;
  ``drop``, ``increase`` (share of samples whose score rose), ``random_drop``, ``random_increase`` (each with
  ``_ci``), ``better``, ``score``, ``n``, ``verdict`` (on ``change`` against random maps).
- ``repeatability`` (with a second checkpoint): ``ssim``, ``spearman`` (+ ``_ci``), ``baseline_ssim_hi``, ``n``,
  ``verdict`` (pass: the SSIM interval lies above the random-pair upper bound).
- ``localisation`` (with masks or boxes): ``source`` (masks / boxes), ``path``, ``n`` (samples with a region),
  ``miou``, ``hit_rate``, ``energy`` each {``value``, ``ci_low``, ``ci_high``, ``n``}, ``hit_chance`` (mean region
  area share), ``by_class`` {class: the same figures}, ``verdict`` (pass: ``hit_rate.ci_low`` > ``hit_chance``).

A dataset of maps per class (multi-label, ``enhance --explain``) is audited class by class (``--class NAME``,
repeatable; default every class with at least two maps): each class on the samples that have a map of it, with that
map, its score under the dataset's ``activation`` (``prob``: the sigmoid of the class's logit for a sigmoid model,
the softmax otherwise; the logit where ``gradcam.score`` is ``logit`` or with ``score=logit``), randomisation and
faithfulness recomputed for that class, localisation against that finding's boxes where the box file names findings
(NIH ``BBox_List_2017.csv``; ``localisation.finding``). Its ``audit.json`` keeps the top-level keys above except the
checks' sections, and adds ``classes`` {class name: the checks' sections, ``verdict``, ``verdicts``, ``seconds``,
``class_id``, ``samples``, ``indices``, ``figures`` (under ``class-<NAME>/``)}, ``classes_not_audited`` {class
name: why}, ``activation`` and ``score``; ``verdict`` passes when every audited class passes and ``verdicts`` holds
each class's verdict; ``audit.md`` has one table per class.
"""
