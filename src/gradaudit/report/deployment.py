"""The deployment audit's page: ``AUDIT_DIR/audit.html``, one self-contained file (as :mod:`.html`).

It opens with the verdict in plain words, then: the audited samples (most at risk first) with the strongest
attack's reconstruction under every candidate defense; the privacy-utility frontier (the strongest attack's best
PSNR on any audited sample against the utility loss, the threshold drawn, DP-SGD points marked with epsilon);
the recommendation (``id="recommendation"``); the threat model; what was not tried; the tables. The tables are
also written as CSV and Markdown under ``AUDIT_DIR/audit/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..data.image_grid import save_reconstruction_grid
from ..evaluation.deployment.config import Deployment
from ..evaluation.deployment.plan import RiskRanking
from ..evaluation.deployment.verdict import Verdict
from ..threat.threat_model import ThreatModel
from .html import _e, _head, _img, _table, write_page
from .tables import to_markdown, write_dict_csv

AUDIT_PAGE = "audit.html"
AUDIT_ASSETS = "audit"

DEFENSE_COLUMNS = [("defense", "defense", "s"), ("recognisable", "recognisable", "d"),
                   ("inconclusive", "inconclusive", "d"), ("audited", "audited", "d"),
                   ("best PSNR (dB)", "max_psnr", ".2f"), ("mean PSNR (dB)", "mean_psnr", ".2f"),
                   ("best SSIM", "max_ssim", ".3f"), ("final train loss", "final_train_loss", ".4f"),
                   ("utility loss", "utility_loss", "+.4f"), ("test accuracy", "test_accuracy", ".3f"),
                   ("epsilon / update", "epsilon", ".3g"), ("epsilon / rounds", "epsilon_rounds", ".3g"),
                   ("failed cells", "failed_cells", "d")]
RISK_COLUMNS = [("sample", "index", "d"), ("label", "label", "d"), ("role", "role", "s"),
                ("fused rank (max)", "fused_rank_max", ".3f"), ("lambda_max (L2)", "l2_max", ".4g"),
                ("lambda_max (cosine)", "cosine_max", ".4g"), ("gradient norm", "grad_norm", ".4g")]


def _load_pair(audit_dir: Path, sample) -> Optional[tuple[Any, Any]]:
    """(truth, aligned reconstruction) of the audited image (position 0) of the sample's strongest cell."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not sample.images_path:
        return None
    try:
        t = load_file(str(audit_dir / sample.images_path))
    except (SafetensorError, OSError, ValueError):
        return None
    truth, rec = t["truth"].float(), t["reconstruction"].float()
    j = sample.assignment[0] if sample.assignment else 0
    if truth.dim() != 4 or j >= rec.shape[0]:
        return None
    return truth[0:1].clamp(0, 1), rec[j:j + 1].clamp(0, 1)


def samples_grid(audit_dir: Path, verdict: Verdict, path: Path) -> Optional[Path]:
    """Columns: the audited samples; rows: the truth, then the strongest reconstruction under each defense."""
    import torch

    pairs = [[_load_pair(audit_dir, s) for s in d.samples] for d in verdict.defenses]  # each file read once
    truths = [next((row[k] for row in pairs if row[k] is not None), None) for k in range(verdict.audited)]
    if any(t is None for t in truths):
        return None
    truths = [t[0] for t in truths]
    rows = [("truth", torch.cat(truths), [f"#{s.index} {'risk' if s.role != 'typical' else 'typ.'}"
                                          for s in verdict.baseline.samples])]
    for d, row in zip(verdict.defenses, pairs):
        imgs = [p[1] if p else torch.zeros_like(truths[k]) for k, p in enumerate(row)]
        caps = ["-" if s.psnr is None else f"{s.psnr:.1f} dB"
                + (" !" if s.recognisable else " ?" if s.inconclusive else "")
                for s in d.samples]
        rows.append((d.label[:26], torch.cat(imgs), caps))
    return save_reconstruction_grid(rows, path, scale=3)


def frontier_plot(verdict: Verdict, threshold_psnr: float, stem: Path) -> Optional[Path]:
    """The strongest attack's best PSNR against the utility loss, one point per defense."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [d for d in verdict.defenses if d.max_psnr is not None]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for d in pts:
        x = d.utility_loss if d.utility_loss is not None else 0.0
        color = "#c62828" if d.recognisable else "#2e7d32"
        marker = "*" if verdict.recommendation is d else ("s" if d.epsilon is not None else "o")
        ax.scatter([x], [d.max_psnr], c=color, marker=marker, s=140 if marker == "*" else 50, zorder=3)
        text = d.label + ("" if d.epsilon is None else f" (eps {d.epsilon:.3g})")
        ax.annotate(text, (x, d.max_psnr), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xscale("symlog", linthresh=0.1)  # a diverging defense can cost 100x the others
    ax.axhline(threshold_psnr, color="#888", ls="--", lw=1)
    ax.text(ax.get_xlim()[0], threshold_psnr, f" recognisable above {threshold_psnr:g} dB", va="bottom",
            fontsize=7, color="#555")
    ax.set_xlabel("utility loss (final training loss minus no defense's; symlog)")
    ax.set_ylabel("strongest attack: best PSNR of an audited sample (dB)")
    ax.set_title("privacy-utility frontier (red: some sample recognisable; star: recommended)", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = stem.with_suffix(".png")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _threat_model(dep: Deployment, victim: dict[str, Any]) -> list[tuple[str, str]]:
    c = dep.clients
    if c.protocol == "fedsgd":
        client = f"FedSGD: one gradient of a batch of {c.samples} samples"
    elif c.local_batch_size is not None:
        client = (f"FedAvg: {c.local_epochs} local epochs of minibatches of {c.local_batch_size} over {c.samples} "
                  f"samples, lr {c.local_lr:g}, momentum {c.momentum:g}, weight decay {c.weight_decay:g}; the "
                  "minibatch order is the client's secret")
    else:
        client = f"FedAvg: {c.local_steps} full-batch local steps over {c.samples} samples, lr {c.local_lr:g}"
    src = {"user": f"the user's weights ({victim.get('path')})", "fresh": "a fresh initialisation",
           "trained": f"trained by the audit on the public part ({victim.get('epochs')} epochs, "
                      f"{victim.get('images')} images, training accuracy {victim.get('final_accuracy', 0):.1%})"}
    threat = ThreatModel(server="malicious" if dep.audit.malicious_server else "honest", labels=c.labels_known,
                         bn_statistics="known" if c.bn_statistics_known else "n/a", clients=1,
                         update="FedSGD" if c.protocol == "fedsgd" else "FedAvg")
    return [("threat model", threat.label()),
            ("model", f"{dep.model.name} {dep.model.kwargs or ''}".strip()),
            ("victim weights", src.get(victim.get("source"), "?")),
            ("data", f"{dep.data.name}, split '{dep.data.split}' is the clients' private data"),
            ("client", client),
            ("server", "malicious (may send a modified model)" if dep.audit.malicious_server
             else "honest-but-curious (sees the shared update only)"),
            ("server knows", ", ".join(k for k, v in (("the labels", c.labels_known),
                                                        ("the batch-norm statistics", c.bn_statistics_known))
                                       if v) or "neither the labels nor the batch-norm statistics"),
            ("prior", dep.audit.prior or "none (no generative model of the data)"),
            ("recognisable", dep.threshold.describe())]


def _not_tried(dep: Deployment, verdict: Verdict) -> list[str]:
    out = []
    if not dep.audit.malicious_server:
        out.append("malicious-server attacks (Robbing the Fed, trap weights, fishing): the deployment declares an "
                   "honest server; set audit.malicious_server: true to include them")
    else:
        out.append("fishing (Wen et al. 2022): it targets one class the server chooses; run it with audit.attacks "
                   "and model fishing (target_class)")
    if dep.audit.prior is None:
        out.append("generative-prior attacks (GI-z/GI-w/GIAS): no prior given (audit.prior)")
    if not dep.clients.labels_known:
        out.append("attacks were not told the labels (recovered from the update instead)")
    out.append(f"only {verdict.audited} samples were attacked (of the {dep.audit.rank} ranked); samples not "
               "attacked may be more exposed than the proxies suggest")
    out.append("LPIPS: not measured (needs pretrained backbone weights)")
    out.append("secure aggregation and multi-round attacks: one client's single update is audited")
    return out


def write_deployment_report(audit_dir: Path, dep: Deployment, verdict: Verdict, ranking: RiskRanking,
                            victim: dict[str, Any], seconds: dict[str, float]) -> Path:
    """Write ``audit.html`` and its tables and figures into ``audit_dir``; return the page's path."""
    assets = audit_dir / AUDIT_ASSETS
    assets.mkdir(parents=True, exist_ok=True)
    drows = [d.row() for d in verdict.defenses]
    write_dict_csv(assets / "defenses.csv", drows)
    (assets / "defenses.md").write_text(to_markdown(drows, DEFENSE_COLUMNS) + "\n")
    roles = {i: ranking.role(i) for i in ranking.audited}
    rrows = [{**r, "role": roles.get(r["index"], "")} for r in ranking.rows]
    write_dict_csv(audit_dir / "risk.csv", rrows)
    grid = samples_grid(audit_dir, verdict, assets / "samples.png")
    frontier = frontier_plot(verdict, dep.threshold.psnr, assets / "frontier")
    title = f"gradaudit deployment audit: {dep.name}"
    parts = _head(title, audit_dir)
    parts += ['<p class="meta">Time: ' + ", ".join(f"{_e(k)} {v:.0f} s" for k, v in seconds.items()) + ".</p>",
              '<section id="verdict"><h2>Verdict</h2>',
              f'<p class="note"><strong>{_e(verdict.headline())}</strong></p><ul>']
    parts += [f"<li>{_e(line)}</li>" for line in verdict.lines()[1:-1]]
    parts.append("</ul></section>")
    parts.append('<section id="samples"><h2>The audited samples</h2><p>Columns: the samples attacked, the most at '
                 f"risk by {_e(ranking.proxy)} first; rows: the truth, then the strongest attack's reconstruction "
                 "under each defense (PSNR below; ! marks a recognisable one, ? one where the attacks under-fit "
                 "the update or fit it and recovered nothing).</p>")
    parts.append(_img(grid, "audited samples and reconstructions") if grid else
                 '<p class="note">Reconstructions not available (cells missing).</p>')
    parts.append("</section>")
    parts.append('<section id="frontier"><h2>Privacy-utility frontier</h2>')
    parts.append(_img(frontier, "privacy-utility frontier") if frontier else '<p class="note">No finished cells.</p>')
    parts.append("</section>")
    parts.append(f'<section id="recommendation"><h2>Recommendation</h2><p><strong>'
                 f"{_e(verdict.recommendation_text())}</strong></p>")
    if verdict.reasons:
        parts.append("<p>Candidates ruled out:</p><ul>" + "".join(
            f"<li>{_e(k)}: {_e(v)}</li>" for k, v in verdict.reasons.items()) + "</ul>")
    parts.append("</section>")
    parts.append('<section id="threat-model"><h2>Threat model</h2><table>' + "".join(
        f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in _threat_model(dep, victim)) + "</table>")
    parts.append(f"<p>Attacks run: {_e(', '.join(verdict.attacks))}.</p>")
    if verdict.fedavg_gain:
        g = verdict.fedavg_gain
        parts.append(f"<p>FedAvg-aware attack against the full-batch simplification on the same updates: "
                     f"{g['fedavg_leakage_psnr']:.2f} vs {g['full_batch_psnr']:.2f} dB mean PSNR "
                     f"({g['gain_db']:+.2f} dB, better on {g['wins']} of {g['pairs']}).</p>")
    parts.append("</section>")
    parts.append('<section id="not-tried"><h2>Not tried</h2><ul>' + "".join(
        f"<li>{_e(t)}</li>" for t in _not_tried(dep, verdict)) + "</ul></section>")
    parts.append('<section id="tables"><h2>Per defense</h2>' + _table(drows, DEFENSE_COLUMNS))
    parts.append("<h2>Risk ranking</h2>" + _table(rrows, [c for c in RISK_COLUMNS if c[1] in (rrows[0] if rrows
                                                                                          else {})]))
    parts.append("</section></body></html>\n")
    return write_page(audit_dir / AUDIT_PAGE, parts)


__all__ = ["AUDIT_PAGE", "samples_grid", "frontier_plot", "write_deployment_report"]
