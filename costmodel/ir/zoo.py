"""Named models, Hugging Face configs, and our scGPT-style model, captured as diagrams.

Nothing here allocates weights or touches the network: models are built on the meta device
from configs (Hugging Face configs are plain JSON; `HF_HUB_OFFLINE=1` is set before import).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from costmodel.ir.capture import TORCH_DTYPES, export_module
from costmodel.ir.diagram import Diagram
from costmodel.errors import UserError, unknown_choice

# Hugging Face zoo entries: the architectures NeuSight measured (BERT as a 2-way sequence
# classifier, GPT-2 and OPT with their LM head), at the published sizes.
HF_ZOO: dict[str, dict] = {
    "bert-base": {"architectures": ["BertForSequenceClassification"], "model_type": "bert",
                  "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                  "intermediate_size": 3072, "vocab_size": 30522, "max_position_embeddings": 512},
    "bert-large": {"architectures": ["BertForSequenceClassification"], "model_type": "bert",
                   "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                   "intermediate_size": 4096, "vocab_size": 30522, "max_position_embeddings": 512},
    "gpt2": {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 768,
             "n_layer": 12, "n_head": 12, "vocab_size": 50257, "n_positions": 1024},
    "gpt2-large": {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 1280,
                   "n_layer": 36, "n_head": 20, "vocab_size": 50257, "n_positions": 1024},
    "opt-1.3b": {"architectures": ["OPTForCausalLM"], "model_type": "opt", "hidden_size": 2048,
                 "num_hidden_layers": 24, "num_attention_heads": 32, "ffn_dim": 8192,
                 "vocab_size": 50272, "max_position_embeddings": 2048,
                 "word_embed_proj_dim": 2048, "do_layer_norm_before": True},
}
ZOO_NAMES = (*HF_ZOO, "scgpt")
# The zoo's architectures at a few thousand parameters, as config.json contents: what tests and
# dry runs execute (through Triton's interpreter, on a CPU) in seconds. `tiny_config` sets depth.
TINY = {
    "bert-base": {"architectures": ["BertForSequenceClassification"], "model_type": "bert",
                  "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                  "intermediate_size": 128, "vocab_size": 100, "max_position_embeddings": 64},
    "gpt2": {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 64, "n_layer": 1,
             "n_head": 2, "vocab_size": 100, "n_positions": 64},
    "scgpt": {"model_type": "scgpt", "n_genes": 100, "d_model": 64, "n_heads": 2, "n_layers": 1,
              "d_ff": 64},
}
_LAYERS = {"bert-base": "num_hidden_layers", "gpt2": "n_layer", "scgpt": "n_layers"}


def tiny_config(name: str, layers: int = 1, **fields) -> dict:
    """`TINY[name]` with `layers` layers and `fields` set."""
    return {**TINY[name], _LAYERS[name]: layers, **fields}


@dataclass(frozen=True)
class ScGPTConfig:
    """Sizes from the scGPT paper (Cui et al., 2024): d=512, 8 heads, 12 layers, d_hid 512."""

    n_genes: int = 60697  # the whole-human gene vocabulary of the released scGPT checkpoints
    d_model: int = 512
    n_heads: int = 8
    n_layers: int = 12
    d_ff: int = 512  # scGPT's feed-forward width equals d_model
    query_fraction: float = 0.25  # of the positions, genes to predict (scGPT trains with 0.25, 0.5, 0.75)
    n_query: int | None = None  # query genes outright; None: query_fraction of the sequence
    # Variants the released scGPT does not use (architecture what-ifs price them):
    head_dim: int | None = None  # None: d_model // n_heads
    n_kv_heads: int | None = None  # key/value heads (grouped-query attention); None: n_heads
    mask: str = "scgpt"  # "scgpt", "causal" or "none" (every gene attends to every gene)

    def queries(self, seq: int) -> int:
        return self.n_query if self.n_query is not None else int(seq * self.query_fraction)


class _ScGPTLayer(nn.Module):
    """Post-norm transformer layer whose attention takes an explicit boolean mask (or None)."""

    def __init__(self, cfg: ScGPTConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads or cfg.n_heads
        self.head_dim = cfg.head_dim or cfg.d_model // cfg.n_heads
        width, kv_width = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        self.qkv = nn.Linear(cfg.d_model, width + 2 * kv_width)
        self.out = nn.Linear(width, cfg.d_model)
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.ff1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.ff2 = nn.Linear(cfg.d_ff, cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.eager = False  # set by `build(attention="eager")`

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, _ = x.shape
        width, kv_width = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        # One split size when the heads are not grouped: the released model's graph, unchanged.
        q, k, v = self.qkv(x).split(width if kv_width == width else [width, kv_width, kv_width], dim=2)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k, v = (t.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2) for t in (k, v))
        if self.eager:  # matmul, softmax, matmul: the (T, T) scores go through memory
            if self.n_kv_heads != self.n_heads:
                k, v = (t.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1) for t in (k, v))
            scores = (q @ k.transpose(-2, -1)) * self.head_dim ** -0.5  # (B, nh, T, T)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            y = torch.softmax(scores, dim=-1) @ v
        else:
            gqa = {"enable_gqa": True} if self.n_kv_heads != self.n_heads else {}
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **gqa)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, width)
        x = self.norm1(x + self.out(y))
        return self.norm2(x + self.ff2(F.relu(self.ff1(x))))


class ScGPT(nn.Module):
    """scGPT's generative model (scGPT's `TransformerGenerator`): position 0 is the cell token,
    then the known genes, then the query genes whose expression it predicts. Known genes embed
    as gene + expression value (scGPT's continuous value encoder), query genes as gene + a
    known/unknown flag (they have no value). The mask lets the cell token and the known genes
    attend to each other and each query gene attend to them and itself. Two heads read the
    output: the expression decoder (three linear layers) per gene, and MVC (masked value
    prediction from the cell embedding: each gene's query vector against the cell token's
    output)."""

    def __init__(self, cfg: ScGPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.gene = nn.Embedding(cfg.n_genes, cfg.d_model)
        self.gene_norm = nn.LayerNorm(cfg.d_model)
        self.value1 = nn.Linear(1, cfg.d_model)
        self.value2 = nn.Linear(cfg.d_model, cfg.d_model)
        self.value_norm = nn.LayerNorm(cfg.d_model)
        self.flag = nn.Embedding(2, cfg.d_model)  # 0 known, 1 unknown: only queries read it
        self.layers = nn.ModuleList(_ScGPTLayer(cfg) for _ in range(cfg.n_layers))
        self.dec1 = nn.Linear(cfg.d_model, cfg.d_model)
        self.dec2 = nn.Linear(cfg.d_model, cfg.d_model)
        self.dec3 = nn.Linear(cfg.d_model, 1)
        self.gene2query = nn.Linear(cfg.d_model, cfg.d_model)
        self.mvc = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, genes: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T = genes.shape
        context = T - self.cfg.queries(T)  # the cell token and the known genes
        genes_emb = self.gene_norm(self.gene(genes))  # (B, T, d)
        known = values[:, :context].unsqueeze(-1)
        known = genes_emb[:, :context] + self.value_norm(self.value2(F.relu(self.value1(known))))
        unknown = torch.ones(B, T - context, dtype=torch.long, device=genes.device)
        query = genes_emb[:, context:] + self.flag(unknown)
        x = torch.cat([known, query], dim=1)
        idx = torch.arange(T, device=genes.device)
        if self.cfg.mask == "scgpt":
            mask = (idx[None, :] < context) | (idx[:, None] == idx[None, :])  # (T, T), True = attend
        else:
            mask = None if self.cfg.mask == "none" else idx[None, :] <= idx[:, None]
        for layer in self.layers:
            x = layer(x, mask)
        expression = self.dec3(F.leaky_relu(self.dec2(F.leaky_relu(self.dec1(x))))).squeeze(-1)
        cell = x[:, 0, :].unsqueeze(2)  # (B, d, 1)
        gene_query = torch.sigmoid(self.gene2query(genes_emb))
        mvc = torch.bmm(self.mvc(gene_query), cell).squeeze(2)  # (B, T)
        return expression, mvc


ATTENTION = ("sdpa", "eager")
# Capture allocates nothing but the attention mask, which it evaluates to classify it: these
# bound what it and a prediction may ask for before anything is built.
MAX_TOKENS = 2**24  # batch x seq
MAX_MASK = 2**28  # batch x seq x seq elements of an evaluated mask (a quarter of a GiB as bools)
MAX_LAYERS = 1024
MAX_WIDTH = 2**17  # hidden, intermediate and head sizes
CONFIG_SIZES = ("hidden_size", "n_embd", "d_model", "intermediate_size", "n_inner", "ffn_dim",
                "num_hidden_layers", "n_layer", "n_layers", "num_attention_heads", "n_head",
                "n_heads", "vocab_size", "max_position_embeddings", "n_positions", "d_ff",
                "n_genes", "word_embed_proj_dim", "num_key_value_heads", "head_dim")


def check_sizes(batch: int, seq: int) -> None:
    """UserError for a workload too small or too big to capture: what was wrong and the limit."""
    if isinstance(batch, bool) or isinstance(seq, bool) or not isinstance(batch, int) \
            or not isinstance(seq, int):
        raise UserError(f"batch and seq must be whole numbers; got batch {batch!r}, seq {seq!r}")
    if batch < 1 or seq < 1:
        raise UserError(f"batch and seq must be at least 1; got batch {batch}, seq {seq}")
    if batch * seq > MAX_TOKENS:
        raise UserError(f"batch x seq = {batch * seq:,} tokens is over the {MAX_TOKENS:,} a "
                        "capture takes; price a smaller batch (time grows about linearly with it)")
    if batch * seq * seq > MAX_MASK:
        raise UserError(f"batch x seq^2 = {batch * seq * seq:,} is over the {MAX_MASK:,} elements "
                        "an attention mask may have when capture evaluates it; use a smaller batch "
                        "or sequence")


def check_config(config: dict, name: str) -> None:
    """UserError for a Hugging Face config whose sizes are not positive whole numbers, exceed
    the capture's limits, or whose heads do not divide its width."""
    for key in CONFIG_SIZES:
        value = config.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{name}: config {key!r} must be a positive whole number, got {value!r}")
        limit = MAX_LAYERS if "layer" in key else 2**24 if key in ("vocab_size", "n_genes") else \
            MAX_TOKENS if "position" in key else MAX_WIDTH
        if value > limit:
            raise UserError(f"{name}: config {key!r} = {value:,} is over the {limit:,} this capture takes")
    width = next((config[k] for k in ("hidden_size", "n_embd", "d_model") if config.get(k)), None)
    heads = next((config[k] for k in ("num_attention_heads", "n_head", "n_heads") if config.get(k)), None)
    if width and heads and width % heads and not config.get("head_dim"):
        raise UserError(f"{name}: {heads} attention heads do not divide the width {width}")
  # how Hugging Face models compute attention (scgpt: always sdpa)


@dataclass(frozen=True, eq=False)
class Built:
    """A model built from its config, in eval mode, with example inputs: `module(*args,
    **kwargs)` runs it. `meta` is what the capture records about the workload."""

    module: nn.Module
    args: tuple
    kwargs: dict
    name: str
    meta: dict


def build(model: str, batch: int = 1, seq: int = 128, dtype: str = "fp32", *,
          overrides: dict | None = None, patch: Callable[[nn.Module], None] | None = None,
          attention: str = "sdpa", device: torch.device | str = "meta", seed: int = 0) -> Built:
    """The model a zoo name or Hugging Face config.json path names, built on `device`.

    On the meta device (what capture uses) nothing is allocated and the inputs are zeros. On a
    real device the weights are the model's own initialisation, seeded by `seed` on that device
    (a GPU's random stream differs from the CPU's), the inputs seeded random (token ids below
    the vocabulary size), and the global RNG is left as it was. `overrides` replaces config
    entries (Hugging Face keys, or `ScGPTConfig` fields); `patch` is called on the built model
    (on meta, so modules it swaps in allocate nothing). Both build a variant of the model: for
    architecture what-ifs, never for the model itself. `attention` is how attention is
    computed: "sdpa" (one fused kernel, flash or memory-efficient by dtype and device; today's
    default in Hugging Face) or "eager" (matmul, softmax, matmul: the scores written to memory,
    as NeuSight's measurements ran).
    UserError for a bad size, dtype, attention or config."""
    check_sizes(batch, seq)
    if dtype not in TORCH_DTYPES:
        raise unknown_choice("dtype", dtype, TORCH_DTYPES)
    if attention not in ATTENTION:
        raise unknown_choice("attention", attention, ATTENTION)
    device = torch.device(device)
    config = model_config(model)
    if isinstance(config, ScGPTConfig):
        fields = {f.name for f in dataclasses.fields(ScGPTConfig)}
        unknown = set(overrides or {}) - fields
        if unknown:
            raise unknown_choice("scgpt config field", min(unknown), fields)
        name = "scgpt" if model == "scgpt" else Path(model).stem
        config = dataclasses.replace(config, **(overrides or {}))
        check_config({k: v for k, v in dataclasses.asdict(config).items() if v is not None}, name)
        return _scgpt(config, name, batch, seq, dtype, patch, attention, device, seed)
    name = model if model in HF_ZOO else Path(model).stem
    check_config({**config, **(overrides or {})}, name)
    return _huggingface({**config, **(overrides or {})}, name, batch, seq, dtype, patch,
                        attention, device, seed)


@contextlib.contextmanager
def _seeded(device: torch.device, seed: int) -> Iterator[torch.Generator | None]:
    """Build under `device` with the global RNG seeded (then restored); yields a generator for
    the inputs (None on meta)."""
    if device.type == "meta":
        with device:
            yield None
        return
    forked = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked), device:
        torch.manual_seed(seed)
        yield torch.Generator(device=device).manual_seed(seed)


def _tokens(high: int, shape: tuple[int, ...], gen: torch.Generator | None) -> torch.Tensor:
    if gen is None:
        return torch.zeros(shape, dtype=torch.long)
    return torch.randint(0, high, shape, generator=gen)


def _scgpt(cfg: ScGPTConfig, name: str, batch: int, seq: int, dtype: str, patch, attention: str,
           device: torch.device, seed: int) -> Built:
    if seq > cfg.n_genes + 1:
        raise UserError(f"scgpt takes at most {cfg.n_genes + 1} positions (the cell token and each "
                        f"of its {cfg.n_genes} genes once); got seq {seq}")
    if isinstance(cfg.query_fraction, bool) or not isinstance(cfg.query_fraction, (int, float)) \
            or not 0 < cfg.query_fraction < 1:
        raise UserError(f"scgpt's query_fraction must be between 0 and 1; got {cfg.query_fraction}")
    n_query = cfg.queries(seq)
    if not 0 < n_query < seq - 1:
        raise UserError(f"scgpt needs 1 to {seq - 2} query genes at seq {seq}; got {n_query}")
    if cfg.mask not in ("scgpt", "causal", "none"):
        raise unknown_choice("scgpt mask", cfg.mask, ("scgpt", "causal", "none"))
    kv = cfg.n_kv_heads or cfg.n_heads
    if cfg.n_heads % kv:
        raise UserError(f"scgpt's {cfg.n_heads} heads do not split into {kv} key/value groups")
    torch_dtype = TORCH_DTYPES[dtype]
    with _seeded(device, seed) as gen:
        module = ScGPT(cfg).to(torch_dtype).eval()
        for layer in module.layers:
            layer.eager = attention == "eager"
        genes = _tokens(cfg.n_genes, (batch, seq), gen)
        values = torch.zeros(batch, seq, dtype=torch_dtype) if gen is None else \
            torch.randn(batch, seq, generator=gen).to(torch_dtype)
        if patch is not None:
            patch(module)
    return Built(module, (genes, values), {}, name,
                 {"batch": batch, "seq": seq, "source": "zoo", "known_genes": seq - 1 - n_query,
                  "query_genes": n_query, "attention": attention})


def _huggingface(config: dict, name: str, batch: int, seq: int, dtype: str, patch,
                 attention: str, device: torch.device, seed: int) -> Built:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    cfg_dict = {k: v for k, v in config.items() if k not in ("torch_dtype", "dtype")}
    try:
        cfg = transformers.AutoConfig.for_model(**cfg_dict)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"transformers cannot build model_type {config.get('model_type')!r}: "
                        f"{_first_line(e)}") from None
    cfg._attn_implementation = attention
    limit = next((getattr(cfg, k) for k in ("max_position_embeddings", "n_positions")
                  if isinstance(getattr(cfg, k, None), int)), None)
    if limit is not None and seq > limit:
        raise UserError(f"{name} takes at most {limit} tokens; got --seq {seq}")
    archs = config.get("architectures")
    if archs is not None and (not isinstance(archs, list) or not all(isinstance(a, str) for a in archs)):
        raise UserError(f"{name}: config 'architectures' must be a list of class names, got {archs!r}")
    arch = (archs or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if arch and cls is None:
        raise UserError(f"transformers {transformers.__version__} has no class {arch!r} "
                        f"(named in the config's 'architectures')")
    with _seeded(device, seed) as gen:
        try:
            module = cls(cfg) if cls else transformers.AutoModel.from_config(cfg)
        except Exception as e:  # noqa: BLE001 - transformers refuses a bad config in many ways
            raise UserError(f"transformers cannot build {name} from its config: {type(e).__name__}: "
                            f"{_first_line(e)}") from None
        module = module.to(TORCH_DTYPES[dtype]).eval()
        ids = _tokens(cfg.vocab_size, (batch, seq), gen)
        if patch is not None:
            patch(module)
    kwargs = {"use_cache": False} if hasattr(cfg, "use_cache") else {}
    return Built(module, (ids,), kwargs, name,
                 {"batch": batch, "seq": seq, "architecture": type(module).__name__,
                  "source": "huggingface-config", "attention": attention})


def load_hf_config(path: str | Path) -> dict:
    """Read a Hugging Face config.json, with a plain error when it is missing or not JSON."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"config {str(path)!r} is a directory; give the config.json inside it")
    if not p.is_file():
        raise UserError(f"config file {str(path)!r} does not exist; give a zoo name "
                        f"({', '.join(ZOO_NAMES)}) or a path to a Hugging Face config.json")
    if p.stat().st_size > 2**20:
        raise UserError(f"config file {str(path)!r} is over 1 MiB; a config.json is a few KB")
    try:
        cfg = json.loads(p.read_text())
    except OSError as e:
        raise UserError(f"cannot read config file {str(path)!r}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file {str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise UserError(f"config file {str(path)!r} has no 'model_type'; "
                        "it does not look like a Hugging Face config.json")
    return cfg


def _first_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message, its first line, at most `limit` characters (some list every
    model type transformers knows)."""
    text = (str(e).strip().splitlines() or [""])[0]
    return text if len(text) <= limit else text[:limit] + "..."


def capture_model(model: str, batch: int = 1, seq: int = 128, dtype: str = "fp32", *,
                  overrides: dict | None = None, patch: Callable[[nn.Module], None] | None = None,
                  attention: str = "sdpa") -> Diagram:
    """Capture a zoo name (`bert-base`, ..., `scgpt`) or a path to a Hugging Face config.json
    (see `build` for the options)."""
    return export_model(model, batch, seq, dtype, overrides=overrides, patch=patch,
                        attention=attention)[1]


def model_config(model: str) -> ScGPTConfig | dict:
    """The config a zoo name or config.json path builds from: a `ScGPTConfig` for scgpt, else
    the Hugging Face config as a dict (a copy: changing it changes no later capture)."""
    if model == "scgpt":
        return ScGPTConfig()
    if model in HF_ZOO:
        return dict(HF_ZOO[model])
    if model.endswith(".json") or os.sep in model or Path(model).exists():
        config = load_hf_config(model)
        if config.get("model_type") != "scgpt":
            return config
        fields = {f.name for f in dataclasses.fields(ScGPTConfig)}
        given = {k: v for k, v in config.items() if k != "model_type"}
        if set(given) - fields:
            raise unknown_choice(f"{Path(model).name}: scgpt config field", min(set(given) - fields), fields)
        return dataclasses.replace(ScGPTConfig(), **given)
    raise UserError(f"unknown model {model!r}; valid choices: {', '.join(ZOO_NAMES)}, "
                    "or a path to a Hugging Face config.json")


def export_model(model: str, batch: int = 1, seq: int = 128, dtype: str = "fp32", *,
                 overrides: dict | None = None, patch: Callable[[nn.Module], None] | None = None,
                 attention: str = "sdpa") -> tuple[torch.export.ExportedProgram, Diagram]:
    """`capture_model`, also returning the exported program (vertices are named after its nodes)."""
    built = build(model, batch, seq, dtype, overrides=overrides, patch=patch, attention=attention)
    try:
        return export_module(built.module, built.args, built.kwargs, name=built.name, dtype=dtype,
                             meta=built.meta)
    except UserError:
        raise
    except Exception as e:  # export failures name the op; pass them on as the user's problem
        raise UserError(f"could not capture {type(built.module).__name__} from {built.name}: "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
