"""Bad models get one clear error; the SNPE backend builds the right commands or says what to install."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcal.model import ModelError, check_model_file, load_checked, model_input, prepare
from qcal.snpe import SnpeError, commands, find_tools


def conv_model(inputs=(("images", [1, 3, 64, 64]),), stride_meta: str | None = None) -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", [inputs[0][0], "w"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    if stride_meta:
        helper.set_model_props(model, {"stride": stride_meta})
    return model


def test_missing_and_non_onnx_files(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_checked(tmp_path / "nope.onnx")
    (tmp_path / "text.onnx").write_text("hello, not a protobuf\n" * 50)
    with pytest.raises(ModelError, match="is not an ONNX model"):
        load_checked(tmp_path / "text.onnx")


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    model = conv_model()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(4 * 3 * 3 * 3, np.float32).tobytes())
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="../secret.bin")
    (tmp_path / "models").mkdir()
    onnx.save(model, tmp_path / "models" / "m.onnx")
    with pytest.raises(ModelError, match="outside the model's folder"):
        load_checked(tmp_path / "models" / "m.onnx")


def test_external_data_inside_the_folder_loads(tmp_path):
    model = conv_model()
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.data", size_threshold=0)
    loaded = load_checked(tmp_path / "m.onnx")
    assert numpy_helper.to_array(loaded.graph.initializer[0]).sum() == 4 * 27


def test_several_inputs_need_a_name():
    model = conv_model(inputs=(("images", [1, 3, 64, 64]), ("extra", [1, 3, 64, 64])))
    with pytest.raises(ModelError, match="has 2 inputs .* set input_list.input_name"):
        model_input(model)
    assert model_input(model, "images").name == "images"
    with pytest.raises(ModelError, match="no input named 'img'"):
        model_input(model, "img")


def test_size_and_stride_disagreements_name_the_key(tmp_path):
    onnx.save(conv_model(), tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="preprocess.height is 640 but the model input 'images' has height 64"):
        check_model_file(tmp_path / "m.onnx", None, 640, 64)
    onnx.save(conv_model(inputs=(("images", ["batch", 3, "h", "w"]),), stride_meta="32"), tmp_path / "d.onnx")
    with pytest.raises(ModelError, match="preprocess.width is 100, not a multiple of the model's stride 32"):
        check_model_file(tmp_path / "d.onnx", None, 640, 100)
    assert check_model_file(tmp_path / "d.onnx", None, 640, 320).layout == "NCHW"


def test_prepare_fixes_batch_one_and_names_nodes():
    model = conv_model(inputs=(("images", ["batch", 3, 64, 64]),))
    model.graph.node[0].name = ""
    prepared = prepare(model)
    dims = prepared.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 1
    assert prepared.graph.node[0].name == "Conv_0"


def fake_tool(folder: Path, name: str) -> Path:
    """A stand-in for an SNPE executable that records its arguments and writes the file it is asked for."""
    path = folder / name
    path.write_text("#!/bin/sh\necho \"$0 $*\" >> \"$(dirname \"$0\")/calls.txt\"\n"
                    "while [ $# -gt 0 ]; do case \"$1\" in --output_path|--output_dlc) : > \"$2\";; esac; shift; done\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_snpe_tools_missing_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SnpeError, match="install Qualcomm's Neural Processing SDK"):
        find_tools()


def test_snpe_commands_prefer_snpe2_and_pass_qcal_encodings(monkeypatch, tmp_path):
    for name in ("snpe-onnx-to-dlc", "snpe-dlc-quant", "snpe-dlc-quantize"):
        fake_tool(tmp_path, name)
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ["PATH"])
    converter, quantizer = find_tools()
    assert Path(quantizer).name == "snpe-dlc-quant"
    convert, quantize = commands(converter, quantizer, "m.onnx", "enc.json", "list.txt", "f.dlc", "q.dlc",
                                 16, per_channel=True, native_uint8=False)
    assert convert[-2:] == ["--quantization_overrides", "enc.json"]
    assert ["--act_bitwidth", "16"] == quantize[quantize.index("--act_bitwidth"):][:2]
    assert "--use_per_channel_quantization" in quantize and "--override_params" in quantize


def test_preactivations_are_conv_outputs_read_only_by_a_leaky_relu_or_relu():
    from onnx import TensorProto, helper, numpy_helper

    from qcal.model import preactivations

    w = numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="c1"),
             helper.make_node("LeakyRelu", ["a"], ["b"], name="l", alpha=0.1),
             helper.make_node("Conv", ["b", "w"], ["c"], name="c2"), helper.make_node("Relu", ["c"], ["d"], name="r"),
             helper.make_node("Conv", ["d", "w"], ["e"], name="c3"), helper.make_node("Relu", ["e"], ["f"], name="r2"),
             helper.make_node("Add", ["e", "f"], ["y"], name="add")]  # c3's output has two readers
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    assert preactivations(helper.make_model(graph)) == {"a": pytest.approx(0.1), "c": 0.0}
