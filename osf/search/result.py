"""The outcome of a search: trials table, Pareto front, best subnet under limits, plots."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from osf.space import Config, SearchSpace
from osf.search.objectives import BUDGETS, DIRECTIONS, check_budgets, resolve_budgets


RERANK_ATTR = "osf_rerank"  # study user attr: config key -> score on the re-ranking sample
RERANK_K_ATTR = "osf_rerank_k"  # study user attr: how many of the best configs were re-ranked


@dataclass
class SearchResult:
    """Results of :func:`osf.search.search`.

    Attributes:
        study: the Optuna study.
        space: the searched space.
        objectives: objective names, e.g. ``("score", "params")``.
        limits: absolute budget per cost (fractions taken of ``reference``).
        reference: costs of the largest config (what fractions refer to).
    """

    study: optuna.Study
    space: SearchSpace
    objectives: tuple[str, ...]
    limits: dict[str, float] = field(default_factory=dict)
    reference: dict[str, float] = field(default_factory=dict)

    # ----------------------------------------------------------- tables
    @property
    def reranked(self) -> dict[str, float]:
        """Config (JSON key) -> its score on the re-ranking sample (see :meth:`rerank`)."""
        return dict(self.study.user_attrs.get(RERANK_ATTR) or {})

    @property
    def trials(self) -> pd.DataFrame:
        """One row per COMPLETE trial: number, config (JSON), metrics, feasible, cached_from, and
        ``rerank_score`` for the configs re-ranked on a larger sample."""
        rows = []
        reranked = self.reranked
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            a = t.user_attrs
            row: dict[str, Any] = {"number": t.number, "config": a.get("config")}
            for m in ("score", "params", "macs", "latency"):
                if m in a:
                    row[m] = a[m]
            row["feasible"] = bool(a.get("feasible", True))
            row["cached_from"] = a.get("cached_from")
            if reranked:
                row["rerank_score"] = reranked.get(a.get("config"))
            rows.append(row)
        cols = ["number", "config", "score", "params", "feasible", "cached_from"]
        return pd.DataFrame(rows, columns=None if rows else cols)

    @property
    def pareto(self) -> pd.DataFrame:
        """Non-dominated feasible trials (one per distinct config), best score first."""
        df = self.trials
        if df.empty:
            return df
        df = df[df["feasible"]]
        # one row per subnet: configs differing only in the widths of dropped blocks are one subnet
        df = df.assign(_subnet=[self._subnet_key(c) for c in df["config"]])
        df = df.drop_duplicates("_subnet").drop(columns="_subnet").reset_index(drop=True)
        signs = {o: (1.0 if DIRECTIONS[o] == "minimize" else -1.0) for o in self.objectives}
        vals = [[signs[o] * r[o] for o in self.objectives] for _, r in df.iterrows()]

        def dominated(i: int) -> bool:
            return any(
                all(a <= b for a, b in zip(vals[j], vals[i])) and any(a < b for a, b in zip(vals[j], vals[i]))
                for j in range(len(vals)) if j != i
            )

        keep = [i for i in range(len(vals)) if not dominated(i)]
        return df.iloc[keep].sort_values("score", ascending=False).reset_index(drop=True)

    def best(self, max_params: float | None = None, max_params_frac: float | None = None,
             max_macs: float | None = None, max_macs_frac: float | None = None,
             max_latency_ms: float | None = None) -> pd.Series:
        """The feasible trial with the best score within the limits.

        ``max_params`` / ``max_macs`` are absolute counts, ``max_params_frac`` /
        ``max_macs_frac`` fractions in (0, 1] of the full model's, ``max_latency_ms``
        milliseconds. Among equal scores the one with fewer parameters wins, then fewer MACs,
        then lower latency, so the trial returned is never dominated (the trial number decides
        only between identical results). Raises ``ValueError`` for a bad limit or if no trial fits.

        When the search re-ranked its best configs on a larger sample (:meth:`rerank`), the
        winner is the best ``rerank_score`` among the top-k (by search score) trials within the
        limits that were re-ranked, provided the best of them by search score was; the search
        score decides otherwise.
        """
        budgets = check_budgets({"max_params": max_params, "max_params_frac": max_params_frac, "max_macs": max_macs,
                                 "max_macs_frac": max_macs_frac, "max_latency_ms": max_latency_ms})
        df = self.trials
        df = df[df["feasible"]] if not df.empty else df
        scored = df[df["score"].notna()] if not df.empty else df
        given = []
        for arg, lim in budgets.items():
            name, frac = BUDGETS[arg]
            if name not in df.columns or (frac and name not in self.reference):
                raise ValueError(f"{arg}: no {name} were recorded in this search; add {name!r} to objectives or budgets")
            absolute = resolve_budgets({arg: lim}, self.reference)[name]
            df = df[df[name] <= absolute + 1e-9]
            least = scored[name].min() if not scored.empty else None
            given.append(f"{arg}={lim:g} ({absolute:,.6g}; the cheapest scored trial has {least:,.6g})"
                         if least is not None else f"{arg}={lim:g}")
        df = df[df["score"].notna()] if not df.empty else df
        if df.empty:
            within = f" within {', '.join(given)}" if given else ""
            raise ValueError(f"no feasible trial{within}; {len(scored)} trial(s) were scored")
        # the best score; among equal scores the cheapest (params, then MACs, then latency): a
        # dominated trial is never returned, and the trial number never decides
        keys = ["score", *[c for c in ("params", "macs", "latency") if c in df.columns], "number"]
        df = df.sort_values(keys, ascending=[False] + [True] * (len(keys) - 1))
        k = int(self.study.user_attrs.get(RERANK_K_ATTR) or 0)
        if k and "rerank_score" in df.columns:
            top = df.drop_duplicates("config").iloc[:k]
            top = top[top["rerank_score"].notna()] if pd.notna(top["rerank_score"].iloc[0]) else top.iloc[:0]
            if not top.empty:  # the search's best here was re-ranked: the larger sample decides
                return top.sort_values(["rerank_score", *keys[1:]],
                                       ascending=[False] + [True] * (len(keys) - 1)).iloc[0]
        return df.iloc[0]

    def top_configs(self, k: int, **limits: float | None) -> list[str]:
        """The config keys of the ``k`` best distinct feasible trials by search score within
        ``limits`` (the arguments of :meth:`best`)."""
        budgets = check_budgets(limits)
        df = self.trials
        if df.empty:
            return []
        df = df[df["feasible"] & df["score"].notna()]
        for arg, lim in budgets.items():
            name, _ = BUDGETS[arg]
            if name in df.columns:
                df = df[df[name] <= resolve_budgets({arg: lim}, self.reference)[name] + 1e-9]
        keys = ["score", *[c for c in ("params", "macs", "latency") if c in df.columns], "number"]
        df = df.sort_values(keys, ascending=[False] + [True] * (len(keys) - 1)).drop_duplicates("config")
        return list(df["config"].iloc[:k])

    def rerank(self, sn: Any, evaluator: Any, k: int = 5, **limits: float | None) -> dict[str, float]:
        """Score the ``k`` best configs within ``limits`` again with ``evaluator`` (a larger sample
        than the search's, e.g. ``evaluator.full_sample()``) and keep the scores in the study, so
        :meth:`best` picks among them by the larger sample. Configs scored before are not scored
        again. Returns config key -> re-ranking score."""
        from osf.search.objectives import evaluate_score

        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"rerank k must be a positive number of configs, got {k!r}")
        done = self.reranked
        for key in self.top_configs(k, **limits):
            if key not in done:
                done[key] = evaluate_score(sn, evaluator, json.loads(key))
                self.study.set_user_attr(RERANK_ATTR, done)
        self.study.set_user_attr(RERANK_K_ATTR, max(k, int(self.study.user_attrs.get(RERANK_K_ATTR) or 0)))
        return done

    def config(self, number: int) -> Config:
        """The config of trial ``number``."""
        t = self.study.trials[number]
        if "config" not in t.user_attrs:
            raise ValueError(f"trial {number} has no config (state {t.state.name})")
        return json.loads(t.user_attrs["config"])

    # ----------------------------------------------------------- output
    def plot_pareto(self, path: str | Path, cost: str = "params") -> Path:
        """Scatter of score vs ``cost`` for all trials, with the Pareto front drawn."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        df, front = self.trials, self.pareto
        fig, ax = plt.subplots(figsize=(6, 4))
        if not df.empty:
            feas = df[df["feasible"]]
            ax.scatter(feas[cost], feas["score"], s=14, c="tab:blue", alpha=0.5, label="feasible")
            inf = df[~df["feasible"]]
            if not inf.empty:
                ax.scatter(inf[cost], inf["score"], s=14, c="tab:gray", marker="x", label="over budget")
        if not front.empty:
            f = front.sort_values(cost)
            ax.step(f[cost], f["score"], where="post", c="tab:red")
            ax.scatter(f[cost], f["score"], s=30, c="tab:red", label="Pareto front")
        ref = self.reference
        if ref.get("score") is not None and cost in ref:
            ax.scatter([ref[cost]], [ref["score"]], s=120, marker="*", c="gold", edgecolors="k", zorder=5,
                       label="full model")
        if cost in self.limits:
            ax.axvline(self.limits[cost], ls="--", c="k", lw=0.8, label=f"{cost} budget")
        ax.set_xlabel(cost)
        ax.set_ylabel("score")
        ax.legend(loc="lower right")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

    def save(self, run_dir: str | Path) -> Path:
        """Write ``space.json``, ``trials.csv`` and ``pareto.json`` into ``run_dir``."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(run_dir / "space.json", self.space.to_json())
        tmp = run_dir / "trials.csv.tmp"
        self.trials.to_csv(tmp, index=False)
        tmp.replace(run_dir / "trials.csv")
        front = self.pareto
        records = [
            {**{k: _plain(v) for k, v in r.items() if k != "config"}, "config": json.loads(r["config"])}
            for r in front.to_dict("records")
        ]
        payload = {"objectives": list(self.objectives), "limits": self.limits, "reference": self.reference, "pareto": records}
        _atomic_write(run_dir / "pareto.json", json.dumps(payload, indent=2))
        return run_dir

    def table(self) -> str:
        """The Pareto front as a text table, below the full model (the reference, budget or not)."""
        front = self.pareto
        cols = [c for c in ("score", "params", "macs", "latency") if c in front.columns or c in self.reference]
        full = self.reference.get("params")
        rows = [{"": "full model", "trial": self._largest_trial(), **{c: self.reference.get(c) for c in cols}}]
        rows += [{"": "", "trial": int(r["number"]), **{c: r.get(c) for c in cols}} for r in front.to_dict("records")]
        out = pd.DataFrame(rows, columns=["", "trial", *cols])
        for c in cols:
            fmt = "{:,.0f}" if c in ("params", "macs") else "{:.4g}"
            out[c] = [("-" if v is None or v != v else fmt.format(v)) for v in out[c]]
        if full:
            out["params %"] = [("-" if r.get("params") is None else f"{100 * r['params'] / full:.1f}") for r in rows]
        text = out.to_string(index=False)
        return text + ("\n(no feasible trials)" if front.empty else "")

    def _subnet_key(self, config: Any) -> Any:
        from osf.space import config_key

        try:
            return config_key(self.space.canonical(json.loads(config)))
        except (TypeError, ValueError):  # not a config of this space: keep it as it is
            return config

    def _largest_trial(self) -> Any:
        """Number of a trial of the full model (``-`` if none)."""
        from osf.space import config_key

        key = config_key(self.space.largest())
        df = self.trials
        hit = df[df["config"] == key]["number"] if not df.empty else []
        return int(hit.iloc[0]) if len(hit) else "-"


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    if isinstance(v, float) and v != v:
        return None
    return v


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
