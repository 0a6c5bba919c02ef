"""`resid run`'s human-readable outputs: report.md and the training-curve PNG."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from resid.io import atomic_write


def plot_curves(curves: dict[str, list[dict[str, float]]], path: Path) -> None:
    """One panel per trained model: training loss and its validation early-stopping metric per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, h in curves.items() if h]
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        hist = curves[name]
        epochs = [h.get("epoch", i + 1) for i, h in enumerate(hist)]
        loss_key = next((k for k in ("train/loss", "loss", "train_loss") if k in hist[0]), None)
        if loss_key:
            ax.plot(epochs, [h[loss_key] for h in hist], color="tab:blue", label="train loss")
            ax.set_ylabel("train loss", color="tab:blue")
        metric_keys = [k for k in hist[0] if k.startswith("valid") and ("recall@10" in k or "ndcg@10" in k)]
        if metric_keys:
            ax2 = ax.twinx()
            for k, c in zip(metric_keys[:2], ("tab:orange", "tab:green")):
                ax2.plot(epochs, [h.get(k, float("nan")) for h in hist], color=c, label=k)
            ax2.legend(loc="center right", fontsize=7)
        ax.set_title(name)
        ax.set_xlabel("epoch")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def _fmt(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def write_report(path: Path, ds: Any, cfg: dict[str, Any], metrics: dict[str, float], quant: dict[str, dict[str, Any]],
                 notes: list[str], ran: list[str], skipped: list[str], seconds: float) -> None:
    from resid.pipeline import format_table

    s = ds.stats
    lines = [
        f"# resid run: {ds.name}",
        "",
        f"Preset `{cfg.get('preset')}`, seed {cfg.get('seed')}, device `{cfg.get('device')}`; "
        f"{s.get('users', ds.num_users)} users, {s.get('items', ds.num_items)} items, "
        f"{s.get('interactions', '?')} interactions. Ran {', '.join(ran) or 'nothing'}"
        f"{'; skipped (up to date) ' + ', '.join(skipped) if skipped else ''}; {seconds:.0f} s.",
        "",
        "## Test metrics (leave-one-out, full catalog)",
        "",
        "```",
        format_table(metrics),
        "```",
        "",
        "![training curves](curves.png)",
        "",
    ]
    if quant:
        lines += ["## Quantizer diagnostics", ""]
        names = list(quant)
        lines.append("| | " + " | ".join(names) + " |")
        lines.append("|---|" + "---|" * len(names))
        levels = max(int(r.get("levels", 0)) for r in quant.values())
        rows = [("levels", lambda r: r.get("levels")), ("collisions", lambda r: r.get("collisions"))]
        for key, label in (("vocab", "codes"), ("entropy", "H(c_l)"), ("cond_entropy", "H(c_l|C<l)"),
                           ("within_code_cos", "within-code cos"), ("overlap", "hist/target overlap")):
            for lvl in range(levels):
                rows.append((f"{label} L{lvl + 1}", lambda r, key=key, lvl=lvl: _level(r, key, lvl)))
        for label, get in rows:
            lines.append(f"| {label} | " + " | ".join(_fmt(get(quant[n])) for n in names) + " |")
        lines.append("")
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    text = "\n".join(lines)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _level(report: dict[str, Any], key: str, level: int) -> Any:
    per = report.get("per_level") or []
    if level < len(per) and key in per[level]:
        return per[level][key]
    return "-"
