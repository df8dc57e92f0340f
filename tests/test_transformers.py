"""fastce.torch.causal_lm_loss against Hugging Face transformers' own
causal-LM loss, on models built from configs with random weights (no
downloads): a GPT-2 and a Llama, a padded batch with labels of -100.

The loss and every parameter's gradient must equal transformers' (the
model's ``loss_function`` swapped for fastce's), the logits must be read in
place, a compiled step must call fastce's kernels, and a ``Trainer`` given
``compute_loss_func=trainer_causal_lm_loss`` must log the losses of the
default one.
"""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import fastce.torch as ft  # noqa: E402
from fastce import functional  # noqa: E402

pytestmark = [
    # torch's compiler still calls torch.jit, which warns of its own deprecation
    pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning"),
    # a config-built model warns that its generation tokens are not in its small vocabulary
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

VOCAB = 97


def _gpt2():
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def _llama():
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


MODELS = {"gpt2": _gpt2, "llama": _llama}


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (3, 12), generator=g)
    attention = torch.ones_like(ids)
    attention[0, 8:] = 0  # right padding
    attention[2, 10:] = 0
    labels = ids.masked_fill(attention == 0, -100)
    return dict(input_ids=ids, attention_mask=attention, labels=labels)


def _twin_models(name):
    torch.manual_seed(0)
    theirs = MODELS[name]()
    ours = MODELS[name]()
    ours.load_state_dict(theirs.state_dict())
    ours.loss_function = ft.causal_lm_loss
    return theirs, ours


def _loss_and_grads(model, batch, **kwargs):
    model.zero_grad()
    loss = model(**batch, **kwargs).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.fixture
def kernel_calls(monkeypatch):
    """The logits array each call into fastce's kernels received."""
    calls = []
    for name in ("cross_entropy", "cross_entropy_with_grad"):
        real = getattr(functional, name)

        def spy(logits, *args, _real=real, **kwargs):
            calls.append(logits)
            return _real(logits, *args, **kwargs)

        monkeypatch.setattr(ft._functional, name, spy)
    return calls


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("num_items", [None, 13], ids=["mean", "num_items_in_batch"])
def test_loss_and_gradients_equal_transformers(name, num_items, kernel_calls):
    theirs, ours = _twin_models(name)
    batch = _batch()
    extra = {} if num_items is None else dict(num_items_in_batch=torch.tensor(num_items))
    want, want_grads = _loss_and_grads(theirs, batch, **extra)
    seen = []
    hook = ours.lm_head.register_forward_hook(lambda mod, inp, out: seen.append(out))
    got, got_grads = _loss_and_grads(ours, batch, **extra)
    hook.remove()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    for key, grad in want_grads.items():
        torch.testing.assert_close(got_grads[key], grad, rtol=1e-5, atol=1e-7)
    # the lm_head's logits themselves, read where they are: no slice, no copy
    (logits,) = kernel_calls
    assert logits.__array_interface__["data"][0] == seen[0].data_ptr()


def test_bfloat16_model_loss_is_float32_as_transformers():
    theirs, ours = _twin_models("llama")
    theirs.to(torch.bfloat16)
    ours.to(torch.bfloat16)
    batch = _batch(1)
    want, want_grads = _loss_and_grads(theirs, batch)
    got, got_grads = _loss_and_grads(ours, batch)
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for key, grad in want_grads.items():
        torch.testing.assert_close(got_grads[key], grad, rtol=2e-2, atol=1e-3)


def test_shift_labels_and_errors():
    logits = torch.randn(2, 6, VOCAB)
    labels = torch.randint(0, VOCAB, (2, 6))
    shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
    torch.testing.assert_close(
        ft.causal_lm_loss(logits, None, VOCAB, shift_labels=shifted),
        ft.causal_lm_loss(logits, labels, VOCAB),
    )
    with pytest.raises(ValueError, match="vocab_size=50"):
        ft.causal_lm_loss(logits, labels, 50)
    bad = labels.clone()
    bad[1, 3] = VOCAB
    with pytest.raises(IndexError):
        ft.causal_lm_loss(logits, bad)


def test_compiled_training_step_calls_fastce(kernel_calls):
    theirs, ours = _twin_models("gpt2")
    batch = _batch(2)

    def loss_of(model):
        return model(**batch).loss

    explanation = torch._dynamo.explain(loss_of)(ours)
    assert explanation.graph_break_count == 0
    kernel_calls.clear()
    compiled = torch.compile(loss_of, backend="aot_eager")
    for _ in range(2):
        want, want_grads = _loss_and_grads(theirs, batch)
        ours.zero_grad()
        got = compiled(ours)
        got.backward()
        torch.testing.assert_close(got.detach(), want, rtol=1e-6, atol=1e-7)
        for key, param in ours.named_parameters():
            torch.testing.assert_close(param.grad, want_grads[key], rtol=1e-5, atol=1e-7)
        with torch.no_grad():
            for model in (theirs, ours):
                for param in model.parameters():
                    param -= 0.1 * param.grad
    assert len(kernel_calls) == 2


def test_trainer_compute_loss_func_logs_transformers_losses(tmp_path):
    pytest.importorskip("accelerate")
    rows = [{k: v[i] for k, v in _batch(s).items()} for s in range(3) for i in range(3)]

    def train(loss_func):
        theirs, _ = _twin_models("gpt2")
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path), per_device_train_batch_size=3, gradient_accumulation_steps=3,
            max_steps=2, logging_steps=1, learning_rate=1e-2, report_to=[], use_cpu=True,
            save_strategy="no", disable_tqdm=True, seed=0, data_seed=0,
        )  # fmt: skip
        trainer = transformers.Trainer(
            model=theirs, args=args, train_dataset=rows, compute_loss_func=loss_func
        )
        trainer.train()
        return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    want = train(None)
    got = train(ft.trainer_causal_lm_loss)
    assert len(got) == len(want) == 2
    assert got == pytest.approx(want, rel=1e-5)
