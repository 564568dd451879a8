"""clip.model extension points for comparison methods, against openai-clip's reference model.py (loaded by path).

- pre-built text embeddings + EOT positions (`encode_text_embeddings`): token embeddings give `encode_text`'s and
  the reference's features; a hand-assembled CoOp "middle" layout (context vectors around the class-name tokens)
  gives what the reference text tower computes on the same rows;
- sparse per-layer, per-class prompts (TCP: shared context at the input, class-specific tokens at one deep layer).
"""
import pytest
import torch

from clip.tokenizer import tokenize
from test_clip_model import manual_text, reference, tiny_pair  # noqa: F401 (fixtures)

NAMES = ["dog", "golden retriever", "x"]


@pytest.fixture(scope="module")
def pair(tiny_pair):
    return tiny_pair


def reference_text_from_embeddings(ref, embeddings, eot):
    """The reference text tower on given (n, 77, D) input embeddings: + positional embedding, all 77 positions."""
    x = (embeddings + ref.positional_embedding).permute(1, 0, 2)
    x = ref.ln_final(ref.transformer(x).permute(1, 0, 2))
    return x[torch.arange(len(eot)), eot] @ ref.text_projection


def test_token_embeddings_give_encode_text_and_reference_features(pair):
    ours, ref = pair
    text = tokenize([f"a photo of a {name}." for name in NAMES])
    with torch.no_grad():
        got = ours.encode_text_embeddings(ours.token_embedding(text), text.argmax(-1))
        torch.testing.assert_close(got, ours.encode_text(text), atol=1e-5, rtol=0)  # shared-prefix path
        torch.testing.assert_close(got, ref.encode_text(text), atol=1e-5, rtol=0)


def test_hand_built_middle_layout_matches_reference(pair):
    """[SOT] ctx[:2] <class tokens> ctx[2:] . EOT: context at class-dependent positions, EOT where it was."""
    ours, ref = pair
    width = ours.transformer.width
    ctx = torch.randn(4, width, generator=torch.Generator().manual_seed(12))
    text = tokenize([f"X X X X {name}." for name in NAMES])
    eot = text.argmax(-1)
    with torch.no_grad():
        rows = ref.token_embedding(text)  # (n, 77, D)
        built = rows.clone()
        for i, name in enumerate(NAMES):
            n_name = len(tokenize([name])[0].nonzero()) - 2
            built[i, 1:3] = ctx[:2]
            built[i, 3:3 + n_name] = rows[i, 5:5 + n_name]
            built[i, 3 + n_name:5 + n_name] = ctx[2:]
        assert not torch.equal(built, rows)
        expected = reference_text_from_embeddings(ref, built, eot)
        torch.testing.assert_close(ours.encode_text_embeddings(built, eot), expected, atol=1e-5, rtol=0)
        # truncation to the longest EOT changes nothing; neither does a shorter input than the context length
        torch.testing.assert_close(ours.encode_text_embeddings(built[:, :int(eot.max()) + 1], eot), expected,
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("via_embeddings", [False, True])
def test_sparse_class_specific_deep_prompt_matches_reference(pair, via_embeddings):
    """TCP's layout: one shared (m, D) context at the input, one (n, m, D) per-class prompt at block 2 only."""
    ours, ref = pair
    width = ours.transformer.width
    generator = torch.Generator().manual_seed(13)
    text = tokenize([f"X X X {name}." for name in NAMES])
    prompts = [torch.randn(3, width, generator=generator), None, torch.randn(len(NAMES), 3, width,
                                                                             generator=generator)]
    with torch.no_grad():
        expected = manual_text(ref, text, prompts)
        if via_embeddings:
            got = ours.encode_text_embeddings(ours.token_embedding(text), text.argmax(-1), prompts)
        else:
            got = ours.encode_text(text, prompts)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        # the deep per-class prompt matters, and only for its own row
        changed = [p.clone() for p in prompts[::2]]
        changed[1][0] += torch.randn(changed[1][0].shape, generator=generator)  # (a constant shift: LN-invariant)
        moved = ours.encode_text(text, [changed[0], None, changed[1]])
    assert not torch.allclose(moved[0], expected[0], atol=1e-3)
    torch.testing.assert_close(moved[1:], expected[1:], atol=1e-5, rtol=0)


def test_bad_embedding_inputs_raise_clear_errors(pair):
    ours, _ = pair
    width = ours.transformer.width
    with pytest.raises(ValueError, match="one position in"):
        ours.encode_text_embeddings(torch.zeros(2, 10, width), torch.tensor([3, 10]))
    with pytest.raises(ValueError, match="one position in"):
        ours.encode_text_embeddings(torch.zeros(2, 10, width), torch.tensor([3]))
    with pytest.raises(ValueError, match="context length is 77"):
        ours.encode_text_embeddings(torch.zeros(1, 78, width), torch.tensor([3]))
