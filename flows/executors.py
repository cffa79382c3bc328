"""The step executor a flow runs with, and where the TAO model key comes from.

Secrets live in Prefect Secret blocks, so reading them is a flow concern: this module is the only place below which
nothing imports Prefect for a key. Executors get the key as a callable resolved when a step needs it (never as a
parameter: Prefect records parameters)."""

from taoflow.backends.tao.masking import resolve_key
from taoflow.errors import TaoflowError


def key_source(key_block=None):
    """A callable returning the TAO model key from the Prefect Secret block named `key_block`; None without a
    block, which leaves $TAO_MODEL_KEY (resolve_key's fallback)."""
    if not key_block:
        return None

    def key():
        from prefect.blocks.system import Secret
        try:
            return Secret.load(key_block).get()
        except ValueError as e:  # Prefect: "Unable to find block document named ..."
            raise TaoflowError(f"no Prefect Secret block named {key_block!r} holds the TAO model key: create "
                               f"one with `prefect block create secret` or set $TAO_MODEL_KEY ({e})") from None
    return key


def model_key(key_block=None):
    """The key itself, resolved now (inside a task): the Secret block, else $TAO_MODEL_KEY, else None."""
    return resolve_key(key_source(key_block))


def executor_for(backend, cfg, export_format="onnx"):
    """taoflow's PyTorch SSD ("native") or the real TAO Toolkit through the `tao` launcher ("tao"), placed on the
    run's GPUs (cfg.gpus, cfg.share_gpus). export_format "etlt" (native): export writes model.etlt encoded with
    the run's key, resolved when the export runs."""
    placement = {"gpus": cfg.gpus, "share_gpus": cfg.share_gpus}
    if backend == "native":
        from taoflow.backends.native.executor import NativeExecutor
        if export_format == "etlt":
            source = key_source(cfg.tao_key_block)
            return NativeExecutor(export_format="etlt", etlt_key=lambda: resolve_key(source), **placement)
        return NativeExecutor(**placement)
    if backend == "tao":
        from taoflow.backends.tao.executor import TaoConfig
        from taoflow.backends.tao.flow_executor import TaoFlowExecutor
        return TaoFlowExecutor(TaoConfig(key=key_source(cfg.tao_key_block)), **placement)
    raise ValueError(f"unknown backend {backend!r}: choose native or tao")
