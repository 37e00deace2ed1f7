"""Evaluation: datasets, resumable runs, metrics, sweeps and plots.

    datasets.py        DatasetConfig (Hydra group ``dataset``), shipped test sets with
                       checksums, local files, hub sets, simulated sets
    grading.py         is_correct(gold, pred): the one place that decides "correct"
    runner.py          ``ttc eval``: validated plan, crash-safe resumable JSONL records
    progress.py        the eval's progress: a rich bar on a terminal, plain lines in a log
    metrics.py         accuracy (interval clustered by problem), pass@k (unbiased),
                       majority@k, compute
    stats.py           intervals over seeds, Wilson and clustered proportions, tokens to
                       reach an accuracy (or "not reached")
    cli.py             ``ttc eval`` / ``ttc sweep`` logic (overrides, sweep layout)
    report.py          ``ttc report``: tables and accuracy-vs-compute plots
    treeview.py        ``ttc tree``: a stored search tree as a PNG/SVG or one interactive
                       self-contained HTML page
    scaling.py         the simulated compute-vs-accuracy sweep of every strategy
    bench_overhead.py  ``ttc bench overhead``: orchestration time vs generation time
    ray_executor.py    ``executor=ray``: problems sharded over Ray actors

Must NOT know: strategy internals; it reads Result rows.
"""
