"""Command construction for both launcher generations, against tao-ssd-contract.md §5/§6 argument lists."""

import shlex
import subprocess

import pytest

from taoflow.backends.tao import (TAO4, TAO5, DatasetConvertRequest, EvaluateRequest, ExportRequest,
                                  GenTrtEngineRequest, InferenceRequest, PruneRequest, TrainRequest, build_command,
                                  shell_word)
from taoflow.errors import TaoflowError

KEY = "k3y_secret"

CASES = [
    # (request, TAO 5 args, TAO 3/4 args) — args after `tao model ssd <task>` / `tao ssd <task>`
    (DatasetConvertRequest(spec="/s/convert.txt", output_prefix="/d/tfrecords/crpd_train"),
     "-d /s/convert.txt -o /d/tfrecords/crpd_train",
     "-d /s/convert.txt -o /d/tfrecords/crpd_train"),
    (DatasetConvertRequest(spec="/s/convert.txt", output_prefix="/d/t/p", results_dir="/r", validation_fold=0,
                           class_names_file="/s/classes.txt", verbose=True),
     "-d /s/convert.txt -o /d/t/p -f 0 -v -r /r -c /s/classes.txt",
     "-d /s/convert.txt -o /d/t/p -f 0 -v -r /r -c /s/classes.txt"),
    (TrainRequest(spec="/s/train.txt", results_dir="/r/train"),
     f"-e /s/train.txt -r /r/train -k {KEY}",
     f"-e /s/train.txt -r /r/train -k {KEY}"),
    (TrainRequest(spec="/s/retrain.txt", results_dir="/r/retrain", resume_model="/r/prune/pruned.hdf5",
                  initial_epoch=3, arch="ssd", use_multiprocessing=True, gpus=2, gpu_index=(0, 1), use_amp=True,
                  log_file="/r/train.log"),
     f"-e /s/retrain.txt -r /r/retrain -k {KEY} -m /r/prune/pruned.hdf5 --initial_epoch 3 --arch ssd "
     "--use_multiprocessing --gpus 2 --use_amp --gpu_index 0 1 --log_file /r/train.log",
     f"-e /s/retrain.txt -r /r/retrain -k {KEY} -m /r/prune/pruned.hdf5 --initial_epoch 3 --arch ssd "
     "--use_multiprocessing --gpus 2 --use_amp --gpu_index 0 1 --log_file /r/train.log"),
    (EvaluateRequest(model="/r/train/weights/ssd_resnet18_epoch_080.hdf5", spec="/s/train.txt",
                     results_dir="/r/eval", gpu_index=(1,)),
     f"-m /r/train/weights/ssd_resnet18_epoch_080.hdf5 -k {KEY} -e /s/train.txt -r /r/eval --gpu_index 1",
     f"-m /r/train/weights/ssd_resnet18_epoch_080.hdf5 -k {KEY} -e /s/train.txt -r /r/eval --gpu_index 1"),
    (PruneRequest(model="/r/m.tlt", output="/r/prune/pruned"),
     f"-m /r/m.tlt -o /r/prune/pruned -k {KEY}",  # as given: TAO 5 appends .hdf5 itself (see outputs)
     f"-m /r/m.tlt -o /r/prune/pruned -k {KEY}"),
    (PruneRequest(model="/r/m.hdf5", output="/r/prune/pruned.hdf5", results_dir="/r/prune", normalizer="L2",
                  equalization_criterion="intersection", pruning_granularity=8, pruning_threshold=0.1,
                  min_num_filters=16, excluded_layers=("block_1a_conv_1", "block_1b_conv_1"), verbose=True),
     f"-m /r/m.hdf5 -o /r/prune/pruned.hdf5 --results_dir /r/prune -k {KEY} -n L2 -eq intersection -pg 8 "
     "-pth 0.1 -nf 16 -el block_1a_conv_1 block_1b_conv_1 -v",
     f"-m /r/m.hdf5 -o /r/prune/pruned.hdf5 --results_dir /r/prune -k {KEY} -n L2 -eq intersection -pg 8 "
     "-pth 0.1 -nf 16 -el block_1a_conv_1 block_1b_conv_1 -v"),
    (InferenceRequest(model="/r/m", spec="/s/train.txt", image_dir="/d/test", results_dir="/r/infer",
                      threshold=0.4),
     f"-m /r/m -i /d/test -k {KEY} -e /s/train.txt -t 0.4 -r /r/infer",
     f"-i /d/test -o /r/infer/images_annotated -e /s/train.txt -m /r/m -l /r/infer/labels -k {KEY} -t 0.4"),
    (ExportRequest(model="/r/m", output="/r/export/model.onnx", spec="/s/train.txt", gen_ds_config=True),
     f"-m /r/m -k {KEY} -o /r/export/model.onnx -e /s/train.txt --gen_ds_config",
     None),
    (ExportRequest(model="/r/m", output="/r/export/model.etlt", spec="/s/train.txt", gen_ds_config=True,
                   data_type="int8", cal_image_dir="/d/cal", cal_cache_file="/r/export/cal.bin", batches=10,
                   batch_size=8, max_batch_size=4, engine_file="/r/export/model.engine"),
     None,
     f"-m /r/m -k {KEY} -o /r/export/model.etlt -e /s/train.txt --gen_ds_config --data_type int8 "
     "--cal_image_dir /d/cal --cal_cache_file /r/export/cal.bin --batches 10 --batch_size 8 --max_batch_size 4 "
     "--engine_file /r/export/model.engine"),
    (ExportRequest(model="/r/m", output="/r/e/model.onnx", spec="/s/t.txt", cal_json_file="/r/q.json",
                   static_batch_size=1, target_opset=13, results_dir="/r/e", verbose=True, data_type="fp16"),
     f"-m /r/m -k {KEY} -o /r/e/model.onnx -e /s/t.txt --cal_json_file /r/q.json --static_batch_size 1 "
     "--target_opset 13 --results_dir /r/e -v --data_type fp16",
     None),
]


PER_GENERATION = [pytest.param(req, gen, args, id=f"{gen}-{req.task}-{i}")
                  for i, (req, tao5, tao4) in enumerate(CASES)
                  for gen, args in ((TAO5, tao5), (TAO4, tao4)) if args is not None]


@pytest.mark.parametrize("request_, generation, expected", PER_GENERATION)
def test_arguments_per_generation(request_, generation, expected):
    cmd = build_command(request_, generation, launcher="/opt/tao/bin/tao", key=KEY)
    prefix = ["model", "ssd", request_.task] if generation == TAO5 else ["ssd", request_.task]
    assert cmd.argv == ["/opt/tao/bin/tao", *prefix, *shlex.split(expected)]
    assert cmd.task_argv == ["ssd", request_.task, *shlex.split(expected)]


def test_gen_trt_engine_is_a_tao5_deploy_task():
    req = GenTrtEngineRequest(model="/r/e/model.onnx", spec="/s/t.txt", results_dir="/r/engine",
                              engine_file="/r/engine/model.engine", data_type="int8", cal_image_dir="/d/cal",
                              cal_cache_file="/r/engine/cal.bin", max_batch_size=4, opt_batch_size=2,
                              min_batch_size=1, batch_size=8, batches=10, max_workspace_size=2,
                              strict_type_constraints=True, force_ptq=True, verbose=True)
    cmd = build_command(req, TAO5, key=KEY)
    assert cmd.argv == ["tao", "deploy", "ssd", "gen_trt_engine", *shlex.split(
        f"-m /r/e/model.onnx -e /s/t.txt -r /r/engine -k {KEY} --data_type int8 --engine_file /r/engine/model.engine "
        "--cal_image_dir /d/cal --cal_cache_file /r/engine/cal.bin --max_batch_size 4 --opt_batch_size 2 "
        "--min_batch_size 1 --batch_size 8 --batches 10 --max_workspace_size 2 -s --force_ptq -v")]
    assert cmd.task_argv[:2] == ["ssd", "gen_trt_engine"]
    no_key = build_command(GenTrtEngineRequest(model="/m.onnx", spec="/s", results_dir="/r"), TAO5)
    assert no_key.argv == ["tao", "deploy", "ssd", "gen_trt_engine", "-m", "/m.onnx", "-e", "/s", "-r", "/r",
                           "--engine_file", "/r/m.engine"]  # always named, so the result is known
    with pytest.raises(TaoflowError, match="TAO 5 `tao deploy` task"):
        build_command(req, TAO4, key=KEY)


def test_key_optional_on_tao5_required_on_tao4():
    req = TrainRequest(spec="/s", results_dir="/r")
    assert build_command(req, TAO5).argv == ["tao", "model", "ssd", "train", "-e", "/s", "-r", "/r"]
    with pytest.raises(TaoflowError, match="needs the model key"):
        build_command(req, TAO4)
    # dataset_convert never takes a key, even when one is configured
    cmd = build_command(DatasetConvertRequest(spec="/s", output_prefix="/o"), TAO4, key=KEY)
    assert "-k" not in cmd.argv and cmd.key_index is None


def test_suffix_and_option_rules():
    with pytest.raises(TaoflowError, match=r"name the output \*\.onnx"):
        build_command(ExportRequest(model="/m", output="/o/model.etlt"), TAO5, key=KEY)
    with pytest.raises(TaoflowError, match=r"name the output \*\.etlt"):
        build_command(ExportRequest(model="/m", output="/o/model.onnx"), TAO4, key=KEY)
    with pytest.raises(TaoflowError, match="target_opset is a TAO 5 option"):
        build_command(ExportRequest(model="/m", output="/o/m.etlt", target_opset=13), TAO4, key=KEY)
    with pytest.raises(TaoflowError, match="-eq must be one of"):
        build_command(PruneRequest(model="/m", output="/o.hdf5", equalization_criterion="mean"), TAO5)
    with pytest.raises(TaoflowError, match="--arch must be one of"):
        build_command(TrainRequest(spec="/s", results_dir="/r", arch="yolo"), TAO5)
    # -o goes as given; the result names whichever file the task wrote: TAO 5 appends .hdf5, native .pth
    prune = build_command(PruneRequest(model="/m", output="/o/p.tlt"), TAO5)
    assert [p.name for p in prune.outputs["model"]] == ["p.tlt", "p.tlt.hdf5", "p.tlt.pth"]
    assert [p.name for p in build_command(PruneRequest(model="/m", output="/o/p.hdf5"), TAO5).outputs["model"]] == [
        "p.hdf5", "p.hdf5.pth"]
    assert [p.name for p in build_command(PruneRequest(model="/m", output="/o/p.tlt"), TAO4,
                                          key=KEY).outputs["model"]] == ["p.tlt", "p.tlt.pth"]
    export = build_command(ExportRequest(model="/m", output="/o/m.etlt"), TAO4, key=KEY)
    assert [p.name for p in export.outputs["model"]] == ["m.etlt", "m.etlt.onnx"]


def test_int8_calibration_cache_lands_next_to_the_outputs():
    # TAO's default ./cal.bin is in the container's working directory, gone with the container
    export = build_command(ExportRequest(model="/m", output="/o/model.onnx", data_type="int8"), TAO5)
    assert export.args[-2:] == ["--cal_cache_file", "/o/cal.bin"] and str(export.outputs["cal_cache"]) == "/o/cal.bin"
    fp16 = build_command(ExportRequest(model="/m", output="/o/model.onnx", data_type="fp16"), TAO5)
    assert "--cal_cache_file" not in fp16.args and fp16.outputs["cal_cache"] is None
    engine = build_command(GenTrtEngineRequest(model="/o/model.onnx", spec="/s", results_dir="/r", data_type="int8"),
                           TAO5)
    assert "--cal_cache_file /r/cal.bin" in " ".join(engine.args)


def test_paths_go_through_the_translation():
    cmd = build_command(EvaluateRequest(model="/host/r/m.hdf5", spec="/host/s.txt"), TAO5,
                        to_container=lambda p: "/workspace/host" + str(p))
    assert cmd.args == ["-m", "/workspace/host/host/r/m.hdf5", "-e", "/workspace/host/host/s.txt"]


def test_display_masks_the_key_and_launcher_args_never_hold_it():
    cmd = build_command(TrainRequest(spec="/s", results_dir="/r"), TAO5, key=KEY)
    assert KEY in cmd.argv  # TAO needs it
    assert KEY not in cmd.display() and "-k ****" in cmd.display()
    args = cmd.launcher_args("TAOFLOW_TAO_KEY", "MARK")
    assert KEY not in " ".join(args)
    assert args[-3:] == [";", "echo", "MARK=$?"]
    assert args[args.index("-k") + 1] == '"$TAOFLOW_TAO_KEY"'


@pytest.mark.parametrize("arg", ["/data/my images/a b", "/d/$HOME/x", "/d/*.jpg", "a;b&c|d", "~/x", '/d/"q"',
                                 "", "/d/皖A12345", "back\\slash", "{a,b}", "x`id`"])
def test_shell_word_survives_the_launchers_shells(arg):
    # The WHL path: one `sh -c` pass; the docker path: sh parses bash -c '...' then bash parses the inside.
    word = shell_word(arg)
    once = subprocess.run(["sh", "-c", f"printf '%s' {word}"], capture_output=True, text=True).stdout
    assert once == arg
    twice = subprocess.run(["sh", "-c", f"bash -c 'printf %s {word}'"], capture_output=True, text=True).stdout
    assert twice == arg


@pytest.mark.parametrize("arg", ["it's", "two\nlines"])
def test_shell_word_refuses_what_cannot_cross_single_quotes(arg):
    with pytest.raises(TaoflowError, match="quote or newline"):
        shell_word(arg)
