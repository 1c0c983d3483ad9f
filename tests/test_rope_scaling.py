"""Scaled RoPE read from a model's configuration: implemented rules match transformers, others are refused.

Before RopeScaling existed, SmolLMDecoder.from_transformers read only rope_theta, so a Llama-3.1-style
model's logits moved by up to 0.79 (llama3 rule) and 12.8 (linear x4) without a word.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from gqa_lib.core.attention import GroupedQueryAttention
from gqa_lib.core.rope import RopeScaling, RotaryEmbedding, rope_from_config
from gqa_lib.experiments.latent_conversion import to_latent
from gqa_lib.models.smollm_decoder import SmolLMDecoder

# head_dim 8, base 10000: wavelengths 6.3, 63, 628 and 6283 positions. With an original context of 64 and
# Llama 3.1's factors (1 and 4), the first is kept, the second blended and the last two divided by factor:
# all three branches of the llama3 rule are exercised.
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
LINEAR = {"rope_type": "linear", "factor": 4.0}


def tiny_config(rope_scaling=None) -> LlamaConfig:
    return LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                       rope_theta=10000.0, rope_scaling=rope_scaling,
                       initializer_range=0.3)  # large weights: logits of a few units, as a trained model has


def tiny_model(rope_scaling=None) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config(rope_scaling)).eval()


@pytest.mark.parametrize("scaling", [LLAMA3, LINEAR], ids=["llama3", "linear"])
def test_scaled_frequencies_are_transformers(scaling):
    config = tiny_config(scaling)
    theirs, attention_factor = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](config, "cpu")
    base, ours = rope_from_config(config)
    assert attention_factor == 1.0  # neither rule rescales attention, so frequencies are all there is
    got = RotaryEmbedding(8, base, ours).inv_freq(dtype=torch.float64)
    # transformers computes in float32: agreement to float32's resolution
    torch.testing.assert_close(got.float(), theirs.float(), rtol=2e-7, atol=0)
    assert not torch.allclose(got, RotaryEmbedding(8, base).inv_freq()), "the scaling changed nothing"


@pytest.mark.parametrize("scaling", [None, LLAMA3, LINEAR], ids=["plain", "llama3", "linear"])
def test_decoder_logits_match_transformers_with_scaling(scaling):
    model = tiny_model(scaling)
    ids = torch.randint(0, 64, (1, 200), generator=torch.Generator().manual_seed(1))  # past the original 64
    with torch.no_grad():
        theirs = model(input_ids=ids).logits
        ours = SmolLMDecoder.from_transformers(model)(ids)
    # fp32 throughout; differences are summation order only (a dropped scaling moves logits by ~0.1-10)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_latent_conversion_keeps_the_scaling():
    model = tiny_model(LLAMA3)
    layer = SmolLMDecoder.from_transformers(model).attention[0]
    latent = to_latent(layer, rank=2 * layer.n_kv_heads * layer.head_dim)  # full rank: the same layer
    assert latent.rope.scaling == layer.rope.scaling is not None
    x = torch.randn(1, 150, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(latent(x), layer(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rope", [{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
                                  {"rope_type": "dynamic", "factor": 2.0}], ids=["yarn", "dynamic"])
def test_an_unimplemented_rule_is_refused_naming_it(rope):
    model = tiny_model(rope)
    with pytest.raises(ValueError, match=f"rope_type='{rope['rope_type']}' is not implemented"):
        SmolLMDecoder.from_transformers(model)


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"rope_type": "ntk", "factor": 2.0}, "rope_type='ntk'"),
    ({"rope_type": "linear", "factor": 0.0}, "factor=0.0"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0}, "high_freq_factor=1.0"),
    ({"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 0}, "original_max_position_embeddings"),
])
def test_bad_scaling_is_refused_naming_the_field(kwargs, named):
    with pytest.raises(ValueError, match=named.replace("(", r"\(")):
        RopeScaling(**kwargs)


def test_a_layer_refuses_a_scaling_that_is_not_one():
    with pytest.raises(TypeError, match="scaling="):
        GroupedQueryAttention(32, 4, 2, rope_scaling={"rope_type": "linear", "factor": 4.0})


def test_positions_past_the_context_are_refused_before_any_work():
    """A prompt past the model's context ran on positions it was never trained on, without a word."""
    decoder = SmolLMDecoder.from_transformers(tiny_model())  # max_position_embeddings=256
    with pytest.raises(ValueError, match=r"0 cached \+ 257 new ids \+ 0 to generate = 257 positions, past the model's "
                                         r"context of 256 tokens"):
        decoder(torch.zeros(1, 257, dtype=torch.long))
    with pytest.raises(ValueError, match=r"250 new ids \+ 10 to generate = 260 positions.*use at most 246 ids"):
        decoder.generate(torch.zeros(1, 250, dtype=torch.long), n_new=10)
    caches = decoder.new_caches(1, 256)
    decoder(torch.zeros(1, 200, dtype=torch.long), caches)
    with pytest.raises(ValueError, match=r"200 cached \+ 60 new ids"):
        decoder(torch.zeros(1, 60, dtype=torch.long), caches)
    with pytest.raises(ValueError, match=r"token ids are 0\.\.63"):
        decoder(torch.full((1, 3), 64, dtype=torch.long))
