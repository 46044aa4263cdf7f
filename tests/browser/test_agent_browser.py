"""AgentTranscript in JupyterLab: Run streams steps, Stop stops them, an edited hypothesis + Continue
resumes with the edit, and token text with markup stays text.

The notebook scans a few passages (each with an ``<img onerror>`` payload) with a tiny random
model and plays the agent with a scripted `ChatClient` defined in the notebook (a short sleep
per reply, so that Stop lands between steps).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .lab import REPO, NotebookPage, close_notebook, open_and_run, run_count, write_notebook

pytestmark = pytest.mark.browser
TIMEOUT = 120
EVIL = '<img src=x onerror="window.__xss=1">'

CELLS = [
    f"""\
import json, tempfile, time
import workbench as wb
from workbench.agent import Agent
from workbench.core.corpus import default_corpus
from workbench.llm import ChatClient, ChatResponse
from workbench.testing import tiny_model
from workbench.widgets.agent import AgentTranscript

EVIL = {EVIL!r}
model = tiny_model('llama')
texts = [f"{{p[:80]}} {{EVIL}}" for p in default_corpus(max_passages=12)]
store = wb.scan(model, texts, tempfile.mkdtemp() + '/scan', k=4, window=64, batch_size=4, sample=8, progress=False)

class Scripted(ChatClient):
    '''Plays the agent: run_texts with new texts each step; after the user's edit, one more test, then the answer.'''
    kind = 'scripted'
    def __init__(self):
        super().__init__('scripted', cache=None)
        self.n = 0
    def _complete(self, messages, *, max_tokens, temperature, seed, stop):
        time.sleep(0.8)
        self.n += 1
        edit = [m['content'] for m in messages if m['role'] == 'user' and 'New hypothesis' in m['content']]
        if edit:
            after = sum(1 for m in messages[[i for i, m in enumerate(messages) if 'New hypothesis' in m['content']][0]:]
                        if m['role'] == 'assistant')
            if after == 0:
                r = {{'thought': 'test the edit', 'tool': 'run_texts', 'args': {{'texts': ['a, b, c', 'no commas here']}}}}
            else:
                r = {{'thought': 'done', 'tool': 'final_answer',
                      'args': {{'explanation': 'fires on commas', 'evidence': 'a, b, c'}}}}
        else:
            r = {{'thought': f'try text {{self.n}}', 'hypothesis': f'hypothesis {{self.n}}', 'tool': 'run_texts',
                  'args': {{'texts': [f'The cat {{self.n}} {{EVIL}}', 'plain words']}}}}
        return ChatResponse(json.dumps(r), 10, 10, False, 'scripted')

client = Scripted()
agent = Agent(model, store, ('neurons.1', 3), client=client, max_steps=12, score_final=False, warm_start=False, progress=False)""",
    "w = AgentTranscript(agent)\nw",
]


@pytest.fixture(scope="module")
def nb(browser, bundles, lab) -> Iterator[NotebookPage]:
    if not (REPO / "widgets" / "static" / "agent.js").exists():
        pytest.fail("widgets/static/agent.js is missing: run `cd js && node build.mjs`")
    write_notebook(lab.root / "agent.ipynb", CELLS)
    page = open_and_run(lab, browser, "agent.ipynb", timeout=300)
    try:
        yield page
    finally:
        close_notebook(page)


def n_steps(root) -> int:
    return root.locator("[data-testid=step]").count()


def test_run_stop_edit_continue(nb: NotebookPage) -> None:
    assert nb.all_ran and nb.error_outputs() == []
    page = nb.page
    root = nb.widget(".iw-agent")
    nb.wait_run_count(root, 0, timeout=TIMEOUT)  # the (empty) transcript was loaded
    run, stop, cont = (root.locator(f"[data-action={a}]") for a in ("run", "stop", "continue"))
    assert run.is_enabled() and not stop.is_enabled() and not cont.is_enabled()
    assert n_steps(root) == 0 and root.locator(".iw-error").count() == 0

    # Run: steps stream in, each one a kernel reply applied to the view
    c0 = run_count(root)
    run.click()
    page.wait_for_function("el => el.querySelectorAll('[data-testid=step]').length >= 3",
                           arg=root.element_handle(), timeout=TIMEOUT * 1000, polling=100)
    assert run_count(root) >= c0 + 3
    assert root.get_attribute("data-phase") == "running" and stop.is_enabled() and not run.is_enabled()
    first = root.locator("[data-testid=step][data-step='0']")
    assert first.get_attribute("data-tool") == "run_texts"
    assert "model.run(" in first.locator("[data-role=python]").inner_text()
    toks = first.locator("[data-testid=text-row]").first.locator(".iw-tok")
    assert toks.count() > 3
    acts = [float(a) for a in toks.evaluate_all("els => els.map(e => e.dataset.act)")]
    bgs = toks.evaluate_all("els => els.map(e => e.style.backgroundColor)")
    assert len(set(bgs)) > 1 and any(a != 0 for a in acts), "tokens are tinted by activation"
    # the markup in the token text stayed text
    row_text = first.locator("[data-testid=text-row]").first.locator(".iw-tok").all_text_contents()
    assert EVIL in "".join(row_text)
    assert page.evaluate("() => window.__xss") is None and root.locator("img, script").count() == 0
    nb.screenshot("agent-running", root)

    # Stop: the request is cancelled, no more steps arrive, the transcript stays
    stop.click()
    page.wait_for_function("el => el.dataset.phase === 'stopped'", arg=root.element_handle(),
                           timeout=TIMEOUT * 1000, polling=100)
    n_stop = n_steps(root)
    page.wait_for_timeout(3000)  # several replies' worth of time
    assert n_steps(root) == n_stop >= 3
    assert cont.is_enabled() and run.is_enabled() and not stop.is_enabled()
    assert "stopped" in root.locator("[data-testid=status]").inner_text()
    nb.execute("print('STATUS', w.result.status, len(w.result.steps))")
    out = nb.cell_output(-1).inner_text()
    assert "STATUS cancelled" in out, out
    nb.screenshot("agent-stopped", root)

    # edit the hypothesis, Continue: the edit is a step, new steps follow it, the run finishes
    box = root.locator("[data-testid=hypothesis]")
    assert box.input_value().startswith("hypothesis ")  # the agent's latest hypothesis
    box.fill("fires on commas")
    cont.click()
    edit = root.locator("[data-testid=step][data-tool=user_hypothesis]")
    edit.wait_for(timeout=TIMEOUT * 1000)
    k = int(edit.get_attribute("data-step"))
    assert k >= n_stop and "fires on commas" in edit.inner_text()
    page.wait_for_function("el => el.dataset.phase === 'done'", arg=root.element_handle(),
                           timeout=TIMEOUT * 1000, polling=100)
    after = [int(s) for s in root.locator("[data-testid=step]").evaluate_all("els => els.map(e => e.dataset.step)")]
    assert after == sorted(after) == list(range(len(after))), "each step once, in order"
    assert max(after) >= k + 2
    assert root.locator(f"[data-testid=step][data-step='{k + 1}']").get_attribute("data-tool") == "run_texts"
    assert root.locator(f"[data-testid=step][data-step='{max(after)}']").get_attribute("data-tool") == "final_answer"
    assert root.locator("[data-testid=final] [data-testid=explanation]").inner_text() == "fires on commas"
    assert "final answer" in root.locator("[data-testid=status]").inner_text()
    assert root.locator(".iw-error").count() == 0
    nb.execute("print('EDIT', any('New hypothesis: \"fires on commas\"' in m['content'] for m in w.result.messages), "
               "w.result.status, w.result.explanation)")
    out = nb.cell_output(-1).inner_text()
    assert "EDIT True final fires on commas" in out, out
    assert page.evaluate("() => window.__xss") is None
    nb.screenshot("agent-continued", root)
