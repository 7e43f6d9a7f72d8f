"""Help › User Guide and Glossary: a short guide to the studio's workflow and what its figures mean."""
from __future__ import annotations

from PySide6.QtWidgets import QDialog, QTextBrowser, QVBoxLayout, QWidget

FIRST_RUN_HINT = ("Start here: open a model (File › Open, or drop a file), choose a preset in the Plan panel, "
                  "then Quantize (Ctrl+R). Help › User Guide explains every figure.")

GLOSSARY = {
    "bpw": "bits per weight: the size of a tensor (or file) divided by its number of weights. F16 is 16, "
           "Q8_0 8.5, Q4_K 4.5.",
    "rel. RMSE": "relative root-mean-square error of the weights after a round trip through the type: "
                 "‖q(x) − x‖ / ‖x‖. 1 % means the error is a hundredth of the weights' own magnitude.",
    "SNR": "signal-to-noise ratio in decibels, −20·log10(rel. RMSE): higher is better; every 6 dB halves the error.",
    "cosine": "cosine similarity of the weights and their quantized copy; 1 is identical.",
    "imatrix-weighted error": "the relative error with each input column weighted by its importance (the mean "
                              "squared activation an importance matrix records): the error the model's "
                              "outputs feel, not just the weights'.",
    "imatrix": "importance matrix: per-column activation statistics from running the model on text "
               "(llama-imatrix). The quantizers use it to keep important columns precise; some low-bit types "
               "need one.",
    "fallback": "a type whose blocks do not fit a tensor's rows (K-quants need rows that are multiples of 256) "
                "is replaced by the type llama.cpp uses instead (e.g. Q4_K → Q5_0); the Reason column says so.",
    "preset": "one of llama-quantize's file types (Q4_K_M …): a default type plus per-tensor rules that give "
              "some tensors (attn_v, ffn_down, output) more bits.",
    "sampled / exact": "the first error figure comes from a random sample of rows with a confidence interval; "
                       "the exact figure (every row) replaces it in the background.",
    "PPL / KLD": "perplexity and KL-divergence against the original model measure how much the model's "
                 "outputs change; they need the model to run (not yet in the studio: use llama-perplexity).",
}


def guide_html() -> str:
    steps = [
        ("Open a model", "File › Open (GGUF of any type, a .safetensors file) or Open Hugging Face Folder; "
                         "drop files on the window. A split GGUF opens whole from any shard."),
        ("Inspect", "the tensor table (statistics fill in in the background), the histogram with outliers, the "
                    "per-channel spread and the layer heat map. Select a tensor to see every type's error."),
        ("Plan", "choose a preset in the Plan panel; refine with rules (regex, layer ranges), the token-embedding "
                 "and output types, or per-tensor types (right-click in the table). Ctrl+Z undoes any edit. "
                 "Load an imatrix for better low-bit quants."),
        ("Check before writing", "Plan totals show the exact file size, bits per weight and the estimated error; "
                                 "the chart places the plan among the presets."),
        ("Quantize", "Ctrl+R writes the file in the background (progress, ETA, Cancel); every written file "
                     "is verified. File › Compare GGUF Files puts two quants side by side."),
    ]
    items = "".join(f"<li><b>{t}</b>: {d}</li>" for t, d in steps)
    terms = "".join(f"<dt><b>{k}</b></dt><dd>{v}</dd>" for k, v in GLOSSARY.items())
    return (f"<h2>Quant Studio in five steps</h2><ol>{items}</ol>"
            f"<h2><a name='glossary'></a>Glossary</h2><dl>{terms}</dl>"
            "<p>The command line does the same: <code>quant-studio --help</code>.</p>")


class GuideDialog(QDialog):
    def __init__(self, parent: QWidget | None = None, anchor: str = ""):
        super().__init__(parent)
        self.setWindowTitle("Quant Studio — User Guide")
        self.text = QTextBrowser()
        self.text.setHtml(guide_html())
        if anchor:
            self.text.scrollToAnchor(anchor)
        lay = QVBoxLayout(self)
        lay.addWidget(self.text)
        self.resize(720, 640)
