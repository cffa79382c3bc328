"""The taoflow-ssd tasks end to end on a tiny dataset: train/resume, evaluate, prune, inference, export."""

import csv
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from taoflow.backends.native.checkpoint import build_from_checkpoint, load_checkpoint
from taoflow.backends.native.build import anchors_for
from taoflow.backends.native.evaluate import load_model_for, predict, preprocess, read_image
from taoflow.backends.native.prune import prune_checkpoint, prune_model, tao_names
from taoflow.backends.native.train import train

from .conftest import cli, write_spec

# The TensorRT ONNX parser's supported operators (onnx-tensorrt docs/operators.md, TensorRT 8.4, opset <= 13), held
# here as data independently of taoflow's own copy; NonMaxSuppression is experimental and excluded on purpose.
TRT_PARSER_SUPPORTED = set("""Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool
BatchNormalization Cast Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm
GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GRU HardSigmoid Identity If ImageScaler
InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max
MaxPool Mean Min Mul Neg Not Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomUniform RandomUniformLike Range
ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu
Reshape Resize ReverseSequence RNN Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Sigmoid Sign Sin
Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
Transpose Unsqueeze Upsample Where Xor""".split())


def test_training_writes_tao_outputs(trained, tiny_data):
    _, result = trained
    run = tiny_data / "run"
    assert sorted(p.name for p in (run / "weights").iterdir()) == ["ssd_resnet10_epoch_001.pth",
                                                                     "ssd_resnet10_epoch_002.pth"]
    rows = list(csv.DictReader(open(run / "ssd_training_log_resnet10.csv")))
    assert list(rows[0]) == ["epoch", "AP_lpd", "loss", "lr", "mAP", "validation_loss"]
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(float(r["loss"]) > 0 for r in rows)
    status = [json.loads(line) for line in open(run / "status.json")]
    assert status[0]["status"] == "STARTED" and status[-1]["status"] == "SUCCESS"
    assert [s["epoch"] for s in status if "epoch" in s] == [1, 2]


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_data, trained):
    spec = tiny_data / "spec.txt"
    train(spec, tiny_data / "part", device="cpu", max_iterations=3)  # stopped inside epoch 1
    partial = tiny_data / "part" / "weights"
    assert not (partial / "ssd_resnet10_epoch_002.pth").exists()
    # resume from the end of epoch 1 of the full run, as `-m ... --initial_epoch 2` does
    resumed = train(spec, tiny_data / "resumed", resume_model=tiny_data / "run/weights/ssd_resnet10_epoch_001.pth",
                    initial_epoch=2, device="cpu")
    a = load_checkpoint(tiny_data / "run/weights/ssd_resnet10_epoch_002.pth")["model"]
    b = load_checkpoint(resumed["checkpoint"])["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_evaluate_prints_taos_table(trained):
    spec, result = trained
    code, out = cli("evaluate", "-e", spec, "-m", result["checkpoint"], "-k", "anything")
    assert code == 0
    lines = out.strip().splitlines()[-4:]
    assert lines[0] == "*" * 31 and lines[-1] == "*" * 31
    assert lines[1].startswith("lpd           AP    ") and lines[2].startswith("              mAP   ")


def test_prune_follows_min_weight_rules_and_retrains(trained, tiny_data):
    spec, result = trained
    model = build_from_checkpoint(load_checkpoint(result["checkpoint"])).eval()
    with torch.no_grad():  # make 40 of block_3a_conv_1's 256 filters tiny: they must go, rounded to granularity
        model.blocks["block_3a"].convs[0].weight[:40] *= 1e-4
    report = prune_model(model, [3, 96, 96], threshold=0.05, equalization="intersection", granularity=8)
    kept, total = report["layers"]["block_3a_conv_1"]
    assert total == 256 and kept == 216 and kept % 8 == 0
    assert report["ratio"] < 1 and model.current_widths()["block_3a_conv_1"] == 216
    names = set(tao_names(model).values())
    assert not [n for n in report["layers"] if n.startswith(("ssd_conf", "ssd_loc"))] and "ssd_conf_0" in names
    # residual partners (conv_2 and the shortcut of one subblock) always keep the same count
    assert report["layers"]["block_2a_conv_2"] == report["layers"]["block_2a_conv_shortcut"]
    out = tiny_data / "pruned.pth"
    code, text = cli("prune", "-m", result["checkpoint"], "-o", out, "-pth", "0.1", "-eq", "intersection")
    assert code == 0 and "Pruning ratio (pruned model / original model):" in text
    retrain = train(spec, tiny_data / "retrain", resume_model=out, device="cpu", max_iterations=2)
    assert load_checkpoint(retrain["checkpoint"])["arch"]["widths"] == load_checkpoint(out)["arch"]["widths"]


def test_pruning_nothing_says_why(trained, tmp_path, caplog):
    spec, result = trained
    report = prune_checkpoint(result["checkpoint"], tmp_path / "same.pth", threshold=1e-9)
    assert report["ratio"] == 1.0 and report["params_after"] == report["params_before"]
    assert "no filter was pruned" in caplog.text and "-pth 1e-09" in caplog.text


def test_export_runs_in_onnx_runtime_like_pytorch(trained, tiny_data):
    spec, result = trained
    out = tiny_data / "export" / "model.onnx"
    code, text = cli("export", "-e", spec, "-m", result["checkpoint"], "-o", out, "--gen_ds_config",
                     "--data_type", "fp16")
    assert code == 0, text
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert ops <= TRT_PARSER_SUPPORTED and "NonMaxSuppression" not in ops
    assert model.ir_version <= 8 and model.opset_import[0].version <= 13  # onnxruntime 1.10 on JetPack's py3.6
    assert [i.name for i in model.graph.input] == ["Input"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    meta = json.loads((out.parent / "model.json").read_text())
    assert meta["input"]["mean"] == [103.939, 116.779, 123.68] and meta["classes"] == ["lpd"]
    assert meta["output"]["kind"] == "decoded" and meta["precision"] == "fp16"
    assert (out.parent / "labels.txt").read_text() == "background\nlpd\n"

    spec_obj, torch_model, arch = load_model_for(spec, result["checkpoint"])
    images = sorted((tiny_data / "split/val/image").iterdir())
    batch = np.stack([preprocess(read_image(p), 3, 96, 96, spec_obj.image_mean()) for p in images])
    ort_boxes, ort_scores = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        None, {"Input": batch})
    pt_boxes, pt_scores = predict(torch_model, torch.from_numpy(batch), anchors_for(spec_obj, 10), spec_obj.variances)
    sure = pt_scores[..., 1] > 0.05  # compare what could become a detection
    np.testing.assert_allclose(ort_boxes[sure], pt_boxes[sure], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(ort_scores, pt_scores, rtol=1e-3, atol=1e-5)
    code, text = cli("export", "-e", spec, "-m", result["checkpoint"], "-o", out)
    assert code == 2 and "already exists" in text  # export never overwrites


def test_inference_writes_tao_layout(trained, tiny_data):
    spec, result = trained
    code, _ = cli("inference", "-e", spec, "-m", result["checkpoint"], "-i", tiny_data / "split/val/image",
                  "-r", tiny_data / "inf", "-t", "0.0")
    assert code == 0
    stems = sorted(p.stem for p in (tiny_data / "split/val/image").iterdir())
    assert sorted(p.stem for p in (tiny_data / "inf/labels").iterdir()) == stems
    assert len(list((tiny_data / "inf/images_annotated").iterdir())) == len(stems)
    for line in (tiny_data / "inf/labels" / f"{stems[0]}.txt").read_text().splitlines():
        fields = line.split()
        assert len(fields) == 16 and fields[0] == "lpd" and fields[1:4] == ["0", "0", "0"]
    code, _ = cli("inference", "-e", spec, "-m", result["checkpoint"], "-i", tiny_data / "split/val/image",
                  "-o", tiny_data / "tao4_images", "-l", tiny_data / "tao4_labels")
    assert code == 0 and (tiny_data / "tao4_labels").is_dir() and (tiny_data / "tao4_images").is_dir()


@pytest.mark.parametrize("case", ["missing_spec", "unknown_arch", "mismatched_checkpoint", "empty_image_dir",
                                  "not_a_checkpoint"])
def test_user_errors_are_one_clear_line(trained, tiny_data, tmp_path, case):
    spec, result = trained
    if case == "missing_spec":
        argv = ["train", "-e", tmp_path / "nope.txt", "-r", tmp_path / "r"]
        expect = "spec file not found"
    elif case == "unknown_arch":
        bad = tmp_path / "bad.txt"
        bad.write_text(spec.read_text().replace('arch: "resnet"', 'arch: "resnext"'))
        argv = ["train", "-e", bad, "-r", tmp_path / "r"]
        expect = "unknown arch 'resnext'"
    elif case == "mismatched_checkpoint":
        other = write_spec(tmp_path / "other.txt", tiny_data)
        other.write_text(other.read_text().replace("nlayers: 10", "nlayers: 18"))
        argv = ["evaluate", "-e", other, "-m", result["checkpoint"]]
        expect = "does not match the spec: checkpoint has nlayers=10"
    elif case == "empty_image_dir":
        (tmp_path / "empty").mkdir()
        argv = ["inference", "-e", spec, "-m", result["checkpoint"], "-i", tmp_path / "empty", "-r", tmp_path / "r"]
        expect = "no .jpg/.jpeg/.png images"
    else:
        junk = tmp_path / "model.pth"
        junk.write_bytes(b"not a model")
        argv = ["evaluate", "-e", spec, "-m", junk]
        expect = "is not a taoflow checkpoint"
    code, out = cli(*argv)
    assert code == 2
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expect in errors[0], out
    assert "Traceback" not in out


@pytest.mark.slow
def test_gpus_2_runs_ddp_processes(tiny_data, tmp_path):
    """--gpus 2 relaunches under torchrun; on this CPU-only machine the two ranks talk over gloo."""
    import subprocess
    import sys
    spec = write_spec(tmp_path / "spec.txt", tiny_data)
    out = subprocess.run([sys.executable, "-m", "taoflow.backends.native", "train", "-e", spec,
                          "-r", tmp_path / "ddp", "--gpus", "2"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("Training finished") == 1
    assert sorted(p.name for p in (tmp_path / "ddp/weights").iterdir()) == ["ssd_resnet10_epoch_001.pth",
                                                                             "ssd_resnet10_epoch_002.pth"]
    assert len(list(open(tmp_path / "ddp/ssd_training_log_resnet10.csv"))) == 3  # header + 2 epochs, one writer
