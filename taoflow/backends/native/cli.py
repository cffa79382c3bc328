"""`taoflow-ssd`: TAO's `ssd` command-line surface on the native backend.

`taoflow-ssd train -e spec.txt -r results -k KEY` accepts the same arguments as TAO 5's `ssd train` (and so works
when the TAO launcher runs it as `ssd train ...` with TAO_DOCKER_DISABLE=1). The entrypoint wrapper's options
(--gpus, --gpu_index, --use_amp, --log_file, -np) are accepted by every task, as TAO's entrypoint does.
`-k` is accepted everywhere for compatibility; native artifacts are plain PyTorch/ONNX files and are NOT encrypted.
"""

import argparse
import logging
import os
import sys

from ...errors import TaoflowError

KEY_HELP = "TAO model key (native checkpoints are not encrypted; `export --etlt` encodes the model with it)"


def _common(p):
    p.add_argument("--gpus", type=int, default=1, help="number of GPUs (train only uses more than one)")
    p.add_argument("--gpu_index", type=int, nargs="+", default=None, help="GPU indices to use")
    p.add_argument("--use_amp", action="store_true", help="mixed precision training")
    p.add_argument("--log_file", default=None, help="also write the log to this file")
    p.add_argument("-np", "--num_processes", type=int, default=-1, help="accepted for TAO compatibility")
    p.add_argument("-k", "--key", default="", help=KEY_HELP)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser():
    parser = argparse.ArgumentParser(prog="ssd", description="TAO SSD tasks on taoflow's native PyTorch backend. "
                                     + KEY_HELP + ".")
    sub = parser.add_subparsers(dest="task", metavar="TASK", required=True)

    p = sub.add_parser("train", help="train an SSD model")
    p.add_argument("-e", "--experiment_spec_file", required=True)
    p.add_argument("-r", "--results_dir", required=True)
    p.add_argument("-m", "--resume_model_weights", default=None, help="pretrained, pruned or checkpoint .pth")
    p.add_argument("--initial_epoch", type=int, default=1, help="> 1 resumes, with optimizer state, from -m")
    p.add_argument("--arch", choices=("ssd", "dssd"), default=None, help="checked against the spec")
    p.add_argument("--use_multiprocessing", action="store_true", help="accepted for TAO compatibility")
    _common(p)

    p = sub.add_parser("evaluate", help="evaluate a model on the spec's validation data")
    p.add_argument("-m", "--model_path", required=True)
    p.add_argument("-e", "--experiment_spec", required=True)
    p.add_argument("-r", "--results_dir", default=None)
    p.add_argument("-i", "--image_dir", default=None, help="override the validation image directory")
    p.add_argument("-l", "--label_dir", default=None, help="override the validation label directory")
    p.add_argument("-b", "--batch_size", type=int, default=None)
    _common(p)

    p = sub.add_parser("inference", help="run a model on images; write annotated images and KITTI labels")
    p.add_argument("-m", "--model_path", required=True)
    p.add_argument("-i", "--image_dir", required=True, help="image file or directory")
    p.add_argument("-e", "--experiment_spec", required=True)
    p.add_argument("-t", "--threshold", type=float, default=0.3)
    p.add_argument("-r", "--results_dir", default=None, help="TAO 5: images_annotated/ and labels/ go here")
    p.add_argument("-o", "--out_image_dir", default=None, help="TAO 3/4: annotated image directory")
    p.add_argument("-l", "--out_label_dir", default=None, help="TAO 3/4: KITTI label directory")
    p.add_argument("-b", "--batch_size", type=int, default=1)
    _common(p)

    p = sub.add_parser("prune", help="prune a model with TAO's min_weight criterion")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("-o", "--output_file", required=True)
    p.add_argument("-e", "--experiment_spec_path", default=None, help="spec (optional; checked when given)")
    p.add_argument("--results_dir", default=None)
    p.add_argument("-n", "--normalizer", choices=("max", "L2"), default="max")
    p.add_argument("-eq", "--equalization_criterion", default="union",
                   choices=("arithmetic_mean", "geometric_mean", "union", "intersection"))
    p.add_argument("-pg", "--pruning_granularity", type=int, default=8)
    p.add_argument("-pth", "--pruning_threshold", type=float, default=0.1)
    p.add_argument("-nf", "--min_num_filters", type=int, default=16)
    p.add_argument("-el", "--excluded_layers", nargs="*", default=[])
    _common(p)

    p = sub.add_parser("export", help="export to ONNX for TensorRT / ONNX Runtime")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("-o", "--output_file", default=None)
    p.add_argument("-e", "--experiment_spec", default=None)
    p.add_argument("--results_dir", default=None)
    p.add_argument("--gen_ds_config", action="store_true", help="write labels.txt and nvinfer_config.txt")
    p.add_argument("--target_opset", type=int, default=13)
    p.add_argument("--static_batch_size", type=int, default=-1)
    p.add_argument("--data_type", choices=("fp32", "fp16", "int8"), default="fp32")
    p.add_argument("--cal_image_dir", default=None)
    p.add_argument("--cal_data_file", default=None)
    p.add_argument("--cal_cache_file", default="./cal.bin")
    p.add_argument("--cal_json_file", default=None)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--max_batch_size", type=int, default=1)
    p.add_argument("--min_batch_size", type=int, default=1)
    p.add_argument("--opt_batch_size", type=int, default=1)
    p.add_argument("--max_workspace_size", type=int, default=2)
    p.add_argument("--engine_file", default=None)
    p.add_argument("-s", "--strict_type_constraints", action="store_true")
    p.add_argument("--force_ptq", action="store_true")
    p.add_argument("--onnx_route", default="torch", help="accepted for TAO compatibility")
    p.add_argument("--etlt", action="store_true",
                   help="write a .etlt (the ONNX encoded with -k KEY or $TAO_MODEL_KEY by NVIDIA's codec, as TAO "
                        "does; needs Python 3.10 or 3.12 for the codec, see README)")
    _common(p)

    p = sub.add_parser("dataset_convert", help="TFRecords exactly as TAO's dataset_convert writes them")
    from ...datasets.tfrecords import add_cli_arguments
    add_cli_arguments(p)
    return parser


def _setup_logging(args):
    handlers = [logging.StreamHandler(sys.stderr)]
    if getattr(args, "log_file", None):
        handlers.append(logging.FileHandler(args.log_file))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s [%(levelname)s] %(name)s: %(message)s")


def _check_spec(args):
    """Refuse, before any work, spec fields the native backend cannot honour; log those it ignores (check_native).

    train() runs the same check itself, so only the other tasks that read a spec need it here.
    """
    spec_path = {"evaluate": "experiment_spec", "inference": "experiment_spec", "export": "experiment_spec",
                 "prune": "experiment_spec_path"}.get(args.task)
    if spec_path is None or getattr(args, spec_path) is None:
        return
    from ...spec import load_experiment
    from ...spec.experiment import check_native
    task = args.task if args.task in ("evaluate", "inference", "export") else "any"
    for warning in check_native(load_experiment(getattr(args, spec_path), task=task), task=task):
        logging.getLogger("taoflow.backends.native").warning("%s", warning)


def run(args):
    if args.task == "dataset_convert":
        from ...datasets.tfrecords import run_cli
        return run_cli(args)
    _check_spec(args)
    if args.gpu_index is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in args.gpu_index)
    if args.task == "train" and args.gpus > 1 and "WORLD_SIZE" not in os.environ:
        return _relaunch_distributed(args.gpus)
    if args.task == "train":
        from .train import train
        from .evaluate import validation_fn
        if args.arch is not None:
            from ...spec import load_experiment
            spec = load_experiment(args.experiment_spec_file, task="train")
            if spec.is_dssd != (args.arch == "dssd"):
                raise TaoflowError(f"--arch {args.arch} does not match the spec's "
                                   f"{'dssd_config' if spec.is_dssd else 'ssd_config'}")
        result = train(args.experiment_spec_file, args.results_dir, resume_model=args.resume_model_weights,
                       initial_epoch=args.initial_epoch, gpus=args.gpus, use_amp=args.use_amp,
                       evaluate_fn=validation_fn)
        if result["checkpoint"]:  # rank 0 only under DDP
            print(f"Training finished; last checkpoint: {result['checkpoint']}")
        return 0
    if args.task == "evaluate":
        from .evaluate import evaluate_cli
        return evaluate_cli(args)
    if args.task == "inference":
        from .inference import inference_cli
        return inference_cli(args)
    if args.task == "prune":
        from .prune import prune_cli
        return prune_cli(args)
    if args.task == "export":
        from .export import export_cli
        return export_cli(args)
    raise AssertionError(args.task)


def _relaunch_distributed(gpus):
    """`--gpus N`: run this same command under torchrun with N processes (TAO used mpirun the same way)."""
    import subprocess
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
           "-m", "taoflow.backends.native", *sys.argv[1:]]
    return subprocess.call(cmd)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    try:
        return run(args) or 0
    except TaoflowError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
