"""The placeholder-token encoder: injection by mask, and exact equality without a placeholder."""

from __future__ import annotations

import pytest
import torch

from zscir_cli.model.backbone import ModelSpec, load_backbone
from zscir_cli.model.text import TextEncoder, placeholder_token_id


@pytest.fixture(scope="module", params=["zscir-tiny-vit", "zscir-tiny-rn"])
def backbone(request):
    torch.manual_seed(0)
    return load_backbone(ModelSpec(request.param, "none"))


def test_placeholder_id_comes_from_the_tokenizer(backbone):
    pid = placeholder_token_id(backbone.tokenizer, "$")
    tokens = backbone.tokenizer(["a photo of $"])[0].tolist()
    assert tokens.count(pid) == 1
    assert pid == 259  # what CLIP's BPE gives '$'; asserted here, never hard-coded in the code
    assert placeholder_token_id(backbone.tokenizer, "*") != pid


def test_multi_token_placeholder_is_refused(backbone):
    with pytest.raises(ValueError, match="single token"):
        placeholder_token_id(backbone.tokenizer, "zzqxv")


def test_prompt_without_placeholder_encodes_exactly_like_encode_text(backbone):
    enc = TextEncoder(backbone.model, placeholder_token_id(backbone.tokenizer))
    tokens = backbone.tokenizer(["a red circle on a white background", "add a star", ""])
    with torch.no_grad():
        ours = enc(tokens, pseudo=torch.randn(3, enc.width))
        theirs = backbone.model.encode_text(tokens)
    assert torch.equal(ours, theirs)


def test_injecting_a_words_own_embedding_reproduces_that_word(backbone):
    enc = TextEncoder(backbone.model, placeholder_token_id(backbone.tokenizer))
    with_ph = backbone.tokenizer(["a photo of $", "$ and $ on gray"])
    plain = backbone.tokenizer(["a photo of dog", "dog and dog on gray"])
    dog = plain[0][4]  # sot a photo of dog
    pseudo = backbone.model.token_embedding.weight[dog].expand(2, -1)
    with torch.no_grad():
        ours = enc(with_ph, pseudo=pseudo)
        theirs = backbone.model.encode_text(plain)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_pseudo_word_changes_only_prompts_that_hold_it(backbone):
    enc = TextEncoder(backbone.model, placeholder_token_id(backbone.tokenizer))
    tokens = backbone.tokenizer(["a photo of $", "a photo of a cat"])
    with torch.no_grad():
        a = enc(tokens, pseudo=torch.zeros(2, enc.width))
        b = enc(tokens, pseudo=torch.ones(2, enc.width))
    assert not torch.allclose(a[0], b[0])
    assert torch.equal(a[1], b[1])


def test_block_hooks_run_after_the_named_block(backbone):
    enc = TextEncoder(backbone.model, placeholder_token_id(backbone.tokenizer))
    seen = []

    def hook(x, tokens, mask):
        seen.append((x.shape, int(mask.sum())))
        return x

    tokens = backbone.tokenizer(["a photo of $"])
    with torch.no_grad():
        base = enc(tokens, pseudo=torch.zeros(1, enc.width))
        hooked = enc(tokens, pseudo=torch.zeros(1, enc.width), block_hooks={2: [hook]})
    assert torch.equal(base, hooked)
    assert seen == [((1, tokens.shape[1], enc.width), 1)]


def test_truncated_prefix_gives_the_same_features(backbone):
    enc = TextEncoder(backbone.model, placeholder_token_id(backbone.tokenizer))
    tokens = backbone.tokenizer(["a photo of $", "a photo of $ that is red and large", "$"])
    pseudo = torch.randn(3, enc.width)
    with torch.no_grad():
        full = enc(tokens, pseudo=pseudo)
        short = enc(tokens, pseudo=pseudo, truncate=True)
    assert enc.can_truncate
    assert torch.allclose(full, short, atol=1e-5)


def test_a_placeholder_typed_by_the_user_stays_an_ordinary_token(backbone):
    from zscir_cli.model.mapping import compose_tokens

    enc = TextEncoder(backbone.model, placeholder_token_id(backbone.tokenizer))
    tokens, mask = compose_tokens(backbone.tokenizer, ["make it $5 cheaper", "make it 5 cheaper"], "$",
                                  enc.placeholder_id)
    assert (tokens[0] == enc.placeholder_id).sum() == 2  # the template's '$' and the user's
    assert mask.sum(dim=1).tolist() == [1, 1] and mask[:, 4].all()  # only the template's: sot a photo of $
    plain = backbone.tokenizer(["a photo of dog that make it $5 cheaper", "a photo of dog that make it 5 cheaper"])
    pseudo = backbone.model.token_embedding.weight[plain[0][4]].expand(2, -1)  # the word 'dog'
    seen = []
    with torch.no_grad():
        ours = enc(tokens, pseudo=pseudo, placeholder_mask=mask, truncate=True,
                   block_hooks={1: [lambda x, _t, m: seen.append(m.sum(dim=1).tolist()) or x]})
        every = enc(tokens, pseudo=pseudo)  # every '$' a pseudo-word: the user's '$' would become 'dog'
        other = enc(tokens, pseudo=torch.zeros_like(pseudo), placeholder_mask=mask)
    # the template's '$' carries the pseudo-word, the user's '$' encodes as '$'
    assert torch.allclose(ours, backbone.model.encode_text(plain), atol=1e-5)
    assert seen == [[1, 1]]  # block hooks (VSI) see the template's position only
    assert not torch.allclose(ours[0], every[0], atol=1e-4) and torch.allclose(ours[1], every[1], atol=1e-5)
    assert not torch.allclose(ours[0], ours[1], atol=1e-4)  # '$5' and '5' differ
    assert not torch.allclose(ours, other, atol=1e-4)  # the pseudo-word still carries the image
