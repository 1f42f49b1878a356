"""Runtime presets from SNPE's runtime table: each decides the precisions, what may stay float, how the
decode tail is kept, and refuses what its runtime cannot run, naming the key."""

from __future__ import annotations

import pytest

from qcal.targets import TargetError, find_soc, resolve


def preset(runtime: str, socs=("SM8650",), activations="auto", tail="auto", search="auto", reduce_range="auto"):
    return resolve(runtime, list(socs), activations, tail, search, reduce_range)


def test_htp_is_w8a16_with_an_fp16_tail_and_nothing_left_to_search():
    t = preset("htp")
    assert (t.activations, t.tail, t.split_outputs, t.search_precision, t.quantized_model) == \
        ("int16", "float", False, None, True)
    assert t.on_htp and not t.int8_only and t.reduce_range is False and "AI Hub" in t.reasons[0]
    eight = preset("htp", activations="int8")
    assert eight.activations == "int8" and eight.search_precision == "int16"  # the search keeps layers in int16
    assert preset("dsp").runtime == "htp"  # SNPE's DSP runtime is the HTP on current SoCs


def test_v68_and_aip_are_8_bit_only_with_boxes_and_scores_apart():
    for t in (preset("htp", socs=["QCS6490"]), preset("aip", socs=[]), preset("htp", socs=["SM8650", "SM8350"])):
        assert (t.activations, t.tail, t.split_outputs, t.search_precision) == ("int8", "int8", True, None)
        assert t.int8_only and "8-bit models only" in t.reasons[0]
    with pytest.raises(TargetError, match="int16 is not possible on htp") as error:
        preset("htp", socs=["QCS6490"], activations="int16")
    assert error.value.key == "quantization.activations"
    with pytest.raises(TargetError, match="float is not possible on aip"):
        preset("aip", socs=[], tail="float")


def test_cpu_keeps_todays_behaviour_and_gpu_writes_no_qdq_model():
    cpu = preset("cpu", socs=[])
    assert (cpu.activations, cpu.tail, cpu.search_precision, cpu.reduce_range) == ("int8", "float", "float", None)
    assert preset("cpu", socs=[], reduce_range=True).reduce_range is True
    gpu = preset("gpu", socs=[])
    assert not gpu.quantized_model and gpu.search_precision is None and "dequantized" in gpu.reasons[0]


@pytest.mark.parametrize("kwargs, key", [
    ({"runtime": "htp", "search": "float"}, "search.precision"),
    ({"runtime": "gpu", "socs": [], "search": "int16"}, "search.precision"),
    ({"runtime": "htp", "reduce_range": True}, "quantization.reduce_range"),
    ({"runtime": "htp", "socs": []}, "target.socs"),
    ({"runtime": "htp", "socs": ["SM9999"]}, "target.socs"),
    ({"runtime": "tpu"}, "target.runtime"),
])
def test_impossible_choices_name_their_key(kwargs, key):
    runtime = kwargs.pop("runtime")
    with pytest.raises(TargetError) as error:
        preset(runtime, **kwargs)
    assert error.value.key == key


def test_socs_by_name_or_qnn_id():
    assert find_soc("sm8650").soc_model == "57" and find_soc("57").name == "SM8650"
    assert find_soc("93").arch == "v68" and not find_soc("93").fp16 and find_soc("SM8750").fp16
