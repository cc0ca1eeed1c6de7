"""Long-context evaluation.

- ``python -m longlora.eval.perplexity``: perplexity at several context lengths (standard sliding
  window, or the original LongLoRA protocol for comparison with the paper's tables);
- ``python -m longlora.eval.passkey``: passkey retrieval over lengths x depths x seeds;
- ``python -m longlora.eval.plot``: plots of result files (several runs on one figure).

Library use: :func:`longlora.eval.perplexity.evaluate_perplexity`,
:func:`longlora.eval.passkey.make_prompt` / :func:`~longlora.eval.passkey.run_trial`,
:func:`longlora.eval.tokens.load_eval_tokens`.
"""
