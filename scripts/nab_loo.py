#!/usr/bin/env python3
"""Out-of-sample NAB scores: the threshold is chosen on the other series, never on the one scored.

NAB optimises one threshold per profile on the very files it scores, which rewards a detector
whose score scale happens to suit those files. A deployment picks its threshold in advance. This
script reports, per profile (scores normalised as NAB does, 0 = never alarms, 100 = perfect):

  in-sample     the threshold optimised on all listed files (NAB's own figure)
  at T          the configured threshold T (--threshold), chosen before seeing any file
  loo-series    leave one series out: each file is scored at the threshold that is optimal on
                the other files; the raw scores (additive over files) are summed and normalised
                against the whole list's null and perfect scores
  loo-category  leave one category (top folder, e.g. realKnownCause) out, likewise

A leave-one-out figure far below the in-sample one means the threshold does not transfer between
series: the detector is over-fitted to the list, or its score does not mean the same rarity on
every series. `--null FILES` adds anomaly-free series (no labelled window) and prints how many
rows alarm on each at T; every alarm there is a false one.

The NAB scoring itself (label geometry, the threshold sweep, the fixed-threshold raw score) is
imported from the scorer given with --scorer (default ../shared/bench/nab_score.py).
"""
import argparse
import importlib.util
import json
import os
import sys

import numpy as np


def load_scorer(path):
    spec = importlib.util.spec_from_file_location("nab_score", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def concat(nab, corpus, scores, files):
    """Scorable rows of `files`: scores, window ids, unweighted values."""
    parts = [(scores[f][corpus.geo[f][2]], corpus.geo[f][0][corpus.geo[f][2]],
              corpus.geo[f][1][corpus.geo[f][2]]) for f in files]
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def best_threshold(nab, corpus, scores, files, prof):
    s, w, u = concat(nab, corpus, scores, files)
    thr, tot = nab.sweep(s, w, u, prof)
    return float(thr[int(np.argmax(tot))])


def raw_at(nab, corpus, scores, files, prof, thr):
    s, w, u = concat(nab, corpus, scores, files)
    return nab.score_at(s, w, u, prof, thr)[0]


def leave_out(nab, corpus, scores, prof, groups):
    """Sum over groups of the group's raw score at the threshold optimal on the rest."""
    total, chosen = 0.0, {}
    for name, held in groups.items():
        rest = [f for f in corpus.files if f not in held]
        thr = best_threshold(nab, corpus, scores, rest, prof)
        chosen[name] = thr
        total += raw_at(nab, corpus, scores, held, prof, thr)
    return total, chosen


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--files", required=True)
    ap.add_argument("--scorer", required=True)
    ap.add_argument("--threshold", type=float, help="the configured threshold T")
    ap.add_argument("--null", help="anomaly-free files (list file or comma-separated)")
    ap.add_argument("--json", help="also write the figures as JSON")
    a = ap.parse_args(argv)
    nab = load_scorer(a.scorer)
    with open(a.labels) as fh:
        windows = json.load(fh)
    files = nab.expand_files(a.files, windows)
    corpus = nab.Corpus(a.data, windows, files)
    scores = nab.load_scores(a.results, corpus)
    profiles = nab.DEFAULT_PROFILES
    series = {f: [f] for f in files}
    categories = {}
    for f in files:
        categories.setdefault(f.split("/")[0], []).append(f)

    out = {}
    print("files=%d windows=%d categories=%d" % (len(files), corpus.n_windows, len(categories)))
    print("%-20s %10s %10s %12s %14s" % ("profile", "in-sample",
                                          "at %s" % a.threshold if a.threshold is not None else "at T",
                                          "loo-series", "loo-category"))
    for name, prof in profiles.items():
        res = nab.evaluate(corpus, scores, {name: prof})[name]
        null, perfect = res["null"], res["perfect"]

        def norm(raw):
            return 100.0 * (raw - null) / (perfect - null)

        entry = {"in_sample": res["score"], "in_sample_threshold": res["threshold"]}
        if a.threshold is not None:
            entry["at_threshold"] = norm(raw_at(nab, corpus, scores, files, prof, a.threshold))
        raw, thr_s = leave_out(nab, corpus, scores, prof, series)
        entry["loo_series"], entry["loo_series_thresholds"] = norm(raw), thr_s
        if len(categories) > 1:
            raw, thr_c = leave_out(nab, corpus, scores, prof, categories)
            entry["loo_category"], entry["loo_category_thresholds"] = norm(raw), thr_c
        out[name] = entry
        print("%-20s %10.2f %10s %12.2f %14s" % (
            name, entry["in_sample"],
            "%.2f" % entry["at_threshold"] if "at_threshold" in entry else "-",
            entry["loo_series"],
            "%.2f" % entry["loo_category"] if "loo_category" in entry else "-"))
    thr = sorted(out["standard"]["loo_series_thresholds"].values())
    print("standard: in-sample threshold %.4f; leave-one-series-out thresholds %.4f .. %.4f"
          % (out["standard"]["in_sample_threshold"], thr[0], thr[-1]))
    if "loo_category_thresholds" in out["standard"]:
        print("standard: leave-one-category-out thresholds %s" % ", ".join(
            "%s %.4f" % kv for kv in sorted(out["standard"]["loo_category_thresholds"].items())))

    if a.null and a.threshold is not None:
        null_files = nab.expand_files(a.null, windows)
        null_corpus = nab.Corpus(a.data, windows, null_files)
        null_scores = nab.load_scores(a.results, null_corpus)
        out["null"] = {}
        print("anomaly-free series, rows alarming at %s (after the probation rows):" % a.threshold)
        for f in null_files:
            keep = null_corpus.geo[f][2]
            n = int((null_scores[f][keep] >= a.threshold).sum())
            out["null"][f] = n
            print("    %-60s %5d of %d" % (f, n, int(keep.sum())))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
