"""Attention maps of a trained hard-attention classifier (model=attention).

    python -m analysis.attention_maps RUN_DIR [--out PNG] [--n 6] [--mode argmax|sample]
                                      [--split test] [--seed 0]

Loads ``RUN_DIR/checkpoint.pt`` (model weights and the run's resolved config), takes the first
``--n`` images of ``--split`` and draws, per image, one panel per glimpse step with the chosen
glimpse box (solid: the finest scale; dashed: the coarser scales), plus a first panel with all
steps' finest boxes numbered and the prediction. ``--mode argmax`` (default) takes the most
probable location at each step; ``sample`` draws locations from the policy (seeded). Writes
``RUN_DIR/attention_maps.png`` unless ``--out`` is given; prints the path.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

COLORS = ["#e41a1c", "#377eb8", "#4daf4a", "#ff7f00", "#984ea3", "#ffff33", "#a65628", "#f781bf"]


def load_run(run_dir: Path, device: str = "cpu"):
    """(model in eval mode, data, config) of a trained attention run."""
    from discograd.files import load_checkpoint
    from discograd.experiment.build import build_data, build_model
    path = Path(run_dir) / "checkpoint.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: RUN_DIR must be a finished run folder")
    state = load_checkpoint(path, device)
    cfg = OmegaConf.create(state["config"])
    if cfg.model.name != "attention":
        raise ValueError(f"{run_dir} trained model '{cfg.model.name}'; attention maps need "
                         "model=attention")
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    model.eval()
    return model, build_data(cfg.data, torch.device(device)), cfg


def draw(model, pixels: torch.Tensor, labels: torch.Tensor, out: Path, mode: str = "argmax",
         seed: int = 0, title: str = "") -> Path:
    gen = torch.Generator().manual_seed(seed)
    logits, where = model.predict(pixels, mode, 1, generator=gen)      # [1, B, C], [1, B, T]
    pred, where = logits[0].argmax(-1), where[0]
    B, T, side = pixels.shape[0], model.T, model.size
    fig, axes = plt.subplots(B, T + 1, figsize=(1.6 * (T + 1), 1.7 * B), squeeze=False)
    for b in range(B):
        img = pixels[b].reshape(side, side).numpy()
        for col in range(T + 1):
            ax = axes[b, col]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlim(-0.5, side - 0.5)
            ax.set_ylim(side - 0.5, -0.5)
            steps = range(T) if col == 0 else [col - 1]
            for t in steps:
                k = int(where[b, t])
                scales = [0] if col == 0 else range(model.scales)
                for s in scales:
                    top, left, size = model.box(k, s)
                    ax.add_patch(Rectangle((left - 0.5, top - 0.5), size, size, fill=False,
                                           lw=1.4 if s == 0 else 0.9, ls="-" if s == 0 else "--",
                                           edgecolor=COLORS[t % len(COLORS)]))
                if col == 0:
                    top, left, size = model.box(k, 0)
                    ax.text(left + 0.5, top + 2.5, str(t + 1), color=COLORS[t % len(COLORS)],
                            fontsize=6, fontweight="bold")
            if col == 0:
                ok = "ok" if int(pred[b]) == int(labels[b]) else "WRONG"
                ax.set_title(f"y={int(labels[b])} pred={int(pred[b])} {ok}", fontsize=7)
            elif b == 0:
                ax.set_title(f"glimpse {col}", fontsize=7)
    fig.suptitle(title or f"glimpses ({mode} locations)", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.attention_maps",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--n", type=int, default=6, help="number of images (default 6)")
    p.add_argument("--mode", choices=("argmax", "sample"), default="argmax")
    p.add_argument("--split", choices=("train", "valid", "test"), default="test")
    p.add_argument("--seed", type=int, default=0, help="seed of --mode sample")
    a = p.parse_args(argv)
    try:
        model, data, cfg = load_run(a.run_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"attention_maps: {e}", file=sys.stderr)
        return 2
    idx = torch.arange(min(a.n, data.n(a.split)))
    pixels = data.batch(a.split, idx)
    out = draw(model, pixels, data.labels(a.split)[idx], a.out or a.run_dir / "attention_maps.png",
               a.mode, a.seed,
               title=f"{cfg.estimator.name}, {cfg.data.name}, {a.split} images, {a.mode} locations")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
