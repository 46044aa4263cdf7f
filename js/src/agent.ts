// AgentTranscript: an interpretability agent's steps as they stream in from a background
// kernel job. Run starts over, Stop cancels the job (the transcript so far stays), Continue
// resumes, sending the hypothesis box's text when the user edited it. Every text is set with
// textContent (token text, thoughts, code), never as markup.
import { Cancelled, Rpc, type AnyModel } from "./lib/rpc";
import { el, fmt, runCounter, showRpcError, tokenSpan, withStyle } from "./lib/dom";
import * as L from "./lib/agent-logic";
import { imageButtons } from "./lib/snapshot";

const CSS = `
.iw-agent { display: flex; flex-direction: column; gap: 6px; max-width: 1100px; }
.iw-agent .iw-agent-top { display: flex; gap: 6px; align-items: center; flex-wrap: wrap; }
.iw-agent .iw-agent-unit { font-weight: 600; margin-right: 8px; }
.iw-agent .iw-agent-hypbox { display: flex; gap: 6px; align-items: flex-start; }
.iw-agent .iw-agent-hypbox textarea { flex: 1 1 auto; min-height: 34px; font-family: inherit; font-size: 12px; padding: 3px 6px; }
.iw-agent .iw-agent-hypbox label { color: var(--jp-ui-font-color2, #555); font-size: 11px; padding-top: 4px; white-space: nowrap; }
.iw-agent .iw-agent-steps { display: flex; flex-direction: column; gap: 6px; }
.iw-agent .iw-agent-step { border: 1px solid var(--jp-border-color2, #ddd); border-radius: 4px; padding: 4px 8px; }
.iw-agent .iw-agent-step[data-error=true] { border-color: #f5c6cb; background: rgba(225,65,55,0.12); }
.iw-agent .iw-agent-step[data-tool=user_hypothesis] { border-style: dashed; background: rgba(40,95,225,0.12); }
.iw-agent .iw-agent-head { display: flex; gap: 8px; align-items: baseline; }
.iw-agent .iw-agent-idx { color: var(--jp-ui-font-color2, #888); font-variant-numeric: tabular-nums; }
.iw-agent .iw-agent-tool { font-weight: 600; background: rgba(40,95,225,0.12); border-radius: 3px; padding: 0 5px; }
.iw-agent .iw-agent-time { color: var(--jp-ui-font-color2, #999); font-size: 11px; margin-left: auto; }
.iw-agent .iw-agent-thought { font-style: italic; color: var(--jp-ui-font-color1, #333); margin: 2px 0; white-space: pre-wrap; }
.iw-agent .iw-agent-hyp { color: var(--jp-ui-font-color2, #555); font-size: 11px; white-space: pre-wrap; }
.iw-agent .iw-agent-args, .iw-agent pre.iw-agent-code { font-family: var(--jp-code-font-family, monospace); font-size: 11px; white-space: pre-wrap; word-break: break-word; margin: 2px 0; }
.iw-agent pre.iw-agent-code { background: var(--jp-layout-color2, #f6f6f6); padding: 3px 6px; border-radius: 3px; }
.iw-agent .iw-agent-text { margin: 2px 0; line-height: 1.7; word-break: break-word; }
.iw-agent .iw-agent-label { color: var(--jp-ui-font-color2, #666); font-size: 11px; margin-right: 6px; }
.iw-agent .iw-agent-step-error { color: var(--iw-down); white-space: pre-wrap; }
.iw-agent .iw-agent-gen { font-family: var(--jp-code-font-family, monospace); white-space: pre-wrap; }
.iw-agent .iw-agent-final { border: 2px solid #8bc34a; border-radius: 4px; padding: 6px 8px; }
.iw-agent .iw-agent-final:empty { display: none; }
.iw-agent details > summary { cursor: pointer; color: var(--jp-ui-font-color2, #555); font-size: 11px; }
`;

function div(cls: string, ...children: (Node | string)[]): HTMLDivElement {
  return el("div", { class: cls }, ...children);
}

/** Tokens tinted by activation (text via textContent; the value in data-act and the tooltip). */
function tintedText(t: L.StepText, scale: number): HTMLElement {
  const row = el("div", { class: "iw-agent-text", "data-testid": "text-row" });
  const top = t.max === null || t.max === undefined ? "" : ` · max ${fmt(Number(t.max), 2)}`;
  row.append(el("span", { class: "iw-agent-label" }, `${t.label}${top}`));
  L.tokenActs(t).forEach(({ text, act }, i) => {
    const s = tokenSpan(text);
    s.style.backgroundColor = L.actColor(act, scale);
    s.style.color = L.actTextColor(act, scale);
    s.dataset.act = String(act);
    s.dataset.pos = String(i);
    if (i === t.argmax) s.dataset.max = "true";
    s.title = `${JSON.stringify(text)}: ${fmt(act, 3)}`;
    row.append(s);
  });
  return row;
}

function topTable(title: string, rows: any[], other: string): HTMLElement {
  const table = el("table", { class: "iw-table" },
    el("tr", {}, el("th", {}, title), el("th", {}, "p"), el("th", {}, other === "prob_after" ? "p after" : "p before")));
  for (const r of rows ?? []) {
    table.append(el("tr", {}, el("td", {}, tokenSpan(String(r.token ?? ""))), el("td", { class: "num" }, fmt(Number(r.prob), 3)),
      el("td", { class: "num" }, r[other] === undefined ? "" : fmt(Number(r[other]), 3))));
  }
  return table;
}

function scoreTable(scores: Record<string, any>): HTMLElement | null {
  const rows = L.scoreRows(scores);
  if (!rows.length) return null;
  const table = el("table", { class: "iw-table", "data-testid": "scores" },
    el("tr", {}, el("th", {}, "score"), el("th", {}, "value"), el("th", {}, "95% CI"), el("th", {}, "n")));
  for (const r of rows) {
    table.append(el("tr", { "data-score": r.name }, el("td", {}, r.name), el("td", { class: "num" }, r.value),
      el("td", { class: "num" }, r.ci), el("td", { class: "num" }, r.n)));
  }
  return table;
}

function details(s: L.StepPayload): HTMLElement[] {
  const d = s.details ?? {};
  const out: HTMLElement[] = [];
  if (s.tool === "ablate" || s.tool === "steer") {
    if (typeof d.kl === "number") out.push(div("iw-agent-hyp", `KL divergence of the next-token distribution: ${fmt(d.kl, 4)}`));
    const box = div("iw-agent-top");
    box.append(topTable("top before", d.top_before, "prob_after"), topTable("top after", d.top_after, "prob_before"));
    out.push(box);
    const gb = el("div", { class: "iw-agent-gen", "data-testid": "generation-before" }, String(d.generation_before ?? ""));
    const ga = el("div", { class: "iw-agent-gen", "data-testid": "generation-after" }, String(d.generation_after ?? ""));
    out.push(div("", el("span", { class: "iw-agent-label" }, "generation before"), gb),
      div("", el("span", { class: "iw-agent-label" }, "generation after"), ga));
  } else if (s.tool === "edit_text" && typeof d.change === "number") {
    out.push(div("iw-agent-hyp", `change of the maximum: ${fmt(d.change, 3)}`));
  } else if (s.tool === "score_explanation") {
    const t = scoreTable(d.hypothesis ?? d.scores ?? {});
    if (t) out.push(t);
    for (const c of (d.counterexamples ?? []).slice(0, 6)) {
      out.push(div("iw-agent-hyp", `${c.kind}: ${JSON.stringify(c.token)} (${fmt(Number(c.activation), 2)}) in ${JSON.stringify(c.context)}`));
    }
  } else if (s.tool === "error" && d.raw) {
    out.push(div("iw-agent-hyp", `last reply: ${String(d.raw).slice(0, 400)}`));
  }
  return out;
}

function stepCard(s: L.StepPayload, scale: number): HTMLElement {
  const card = el("div", { class: "iw-agent-step", "data-testid": "step", "data-step": String(s.index), "data-tool": s.tool });
  if (s.error) card.dataset.error = "true";
  const secs = (s.llm_seconds ?? 0) + (s.seconds ?? 0);
  card.append(div("iw-agent-head", el("span", { class: "iw-agent-idx" }, `#${s.index}`),
    el("span", { class: "iw-agent-tool", "data-testid": "tool" }, L.toolLabel(s.tool)),
    el("span", { class: "iw-agent-time" }, secs > 0 ? `${fmt(secs, 1)} s` : "")));
  if (s.thought) card.append(el("div", { class: "iw-agent-thought", "data-testid": "thought" }, s.thought));
  if (s.tool === "user_hypothesis") {
    card.append(el("div", { class: "iw-agent-thought", "data-testid": "edited-hypothesis" }, `“${String(s.details?.hypothesis ?? "")}”`));
  } else if (s.hypothesis) {
    card.append(el("div", { class: "iw-agent-hyp", "data-testid": "step-hypothesis" }, `hypothesis: ${s.hypothesis}`));
  }
  if (s.tool !== "user_hypothesis" && s.tool !== "error") {
    card.append(el("div", { class: "iw-agent-args", "data-testid": "call" }, `${s.tool}(${L.formatArgs(s.args)})`));
  }
  if (s.error) card.append(el("div", { class: "iw-agent-step-error", "data-testid": "step-error" }, `error: ${s.error}`));
  for (const t of s.texts ?? []) card.append(tintedText(t, scale));
  for (const e of details(s)) card.append(e);
  if (s.python) {
    const pre = el("pre", { class: "iw-agent-code", "data-role": "python" });
    pre.textContent = s.python;
    const det = el("details", { "data-testid": "python" }, el("summary", {}, "Python"), pre);
    det.open = true;
    card.append(det);
  }
  return card;
}

export default {
  render({ model, el: host }: { model: AnyModel; el: HTMLElement }) {
    const rpc = new Rpc(model);
    let disposed = false;
    const root = el("div", { class: "iw-root iw-agent", "data-run-count": "0", "data-phase": "idle" });
    const bump = runCounter(root);
    withStyle(root, CSS);

    const unit = el("span", { class: "iw-agent-unit", "data-testid": "unit" }, String(model.get("unit_label") ?? ""));
    const runBtn = el("button", { class: "iw-btn", "data-action": "run", title: "start a new run" }, "Run");
    const stopBtn = el("button", { class: "iw-btn", "data-action": "stop", title: "stop after the current step" }, "Stop");
    const contBtn = el("button", { class: "iw-btn", "data-action": "continue", title: "continue from this transcript" }, "Continue");
    const status = el("span", { class: "iw-status", "data-testid": "status", role: "status" });
    const box = el("textarea", { "data-testid": "hypothesis", "aria-label": "hypothesis", spellcheck: "false",
      placeholder: "the agent's current hypothesis; edit it, then Continue" });
    box.value = String(model.get("hypothesis") ?? "");
    const errors = el("div", { "data-testid": "error" });
    const stepsBox = el("div", { class: "iw-agent-steps", "data-testid": "steps" });
    const finalBox = el("div", { class: "iw-agent-final", "data-testid": "final" });
    root.append(div("iw-agent-top", unit, runBtn, stopBtn, contBtn, imageButtons(rpc, root, "agent"), status),
      div("iw-agent-hypbox", el("label", {}, "hypothesis"), box), errors, stepsBox, finalBox);
    host.append(root);

    let steps: L.StepPayload[] = [];
    const cards = new Map<number, HTMLElement>();
    let phase: L.Phase = "idle";
    let current: number | null = null;
    let edited = false;
    let lastStatus = "";
    const canRun = () => Boolean(model.get("can_run"));
    const scale = () => Number(model.get("scale")) || 1;

    const update = () => {
      const c = L.controls(phase, steps.length, canRun());
      runBtn.disabled = !c.run;
      stopBtn.disabled = !c.stop;
      contBtn.disabled = !c.cont;
      box.readOnly = !c.edit;
      status.textContent = L.statusText(phase, lastStatus || String(model.get("status") ?? ""), steps.length, Number(model.get("max_steps")) || 0);
      root.dataset.phase = phase;
      root.dataset.nSteps = String(steps.length);
    };

    const addStep = (s: L.StepPayload) => {
      steps = L.mergeStep(steps, s);
      const card = stepCard(s, scale());
      const old = cards.get(s.index);
      if (old) old.replaceWith(card);
      else {
        const next = steps.find((x) => x.index > s.index);
        const before = next ? cards.get(next.index) : undefined;
        if (before) stepsBox.insertBefore(card, before);
        else stepsBox.append(card);
      }
      cards.set(s.index, card);
    };

    const showHypothesis = (h: unknown) => {
      if (!edited && typeof h === "string" && h) box.value = h;
    };

    const showFinal = (c: any) => {
      finalBox.replaceChildren();
      const st = String(c?.status ?? "");
      if ((st !== "final" && st !== "forced") || !c.explanation) return;
      finalBox.append(el("div", { class: "iw-agent-head" }, el("strong", {}, st === "forced" ? "Final answer (forced)" : "Final answer")),
        el("div", { class: "iw-agent-thought", "data-testid": "explanation" }, String(c.explanation)));
      if (c.evidence) finalBox.append(el("div", { class: "iw-agent-hyp", "data-testid": "evidence" }, `evidence: ${c.evidence}`));
      const t = scoreTable(c.scores ?? {});
      if (t) finalBox.append(t);
    };

    const onPartial = (id: number, c: any) => {
      if (disposed || current !== id) return; // a stopped or superseded run
      if (L.isStep(c?.step)) addStep(c.step);
      showHypothesis(c?.hypothesis);
      bump();
      update();
    };

    const start = (params: Record<string, unknown>) => {
      errors.replaceChildren();
      finalBox.replaceChildren();
      let id = -1;
      const req = rpc.request("run", params, (c: any) => onPartial(id, c));
      id = req.id;
      current = id;
      phase = "running";
      lastStatus = "";
      update();
      req.promise.then((c: any) => {
        if (disposed || current !== id) return;
        current = null;
        phase = "done";
        lastStatus = String(c?.status ?? "");
        showHypothesis(c?.hypothesis);
        showFinal(c);
        bump();
        update();
      }).catch((err: unknown) => {
        if (disposed || current !== id) return;
        current = null;
        phase = err instanceof Cancelled ? "stopped" : "error";
        showRpcError(errors, err);
        update();
      });
    };

    runBtn.addEventListener("click", () => {
      if (!canRun()) return;
      steps = [];
      cards.clear();
      stepsBox.replaceChildren();
      edited = false;
      box.value = "";
      start({ restart: true, after: 0 });
    });
    stopBtn.addEventListener("click", () => {
      if (current === null) return;
      phase = "stopping";
      update();
      rpc.cancel(current); // the promise rejects with Cancelled → "stopped"
    });
    contBtn.addEventListener("click", () => {
      if (!canRun()) return;
      const h = L.hypothesisToSend(edited, box.value, String(model.get("hypothesis") ?? ""));
      edited = false;
      root.dataset.edited = "false";
      start({ hypothesis: h, after: steps.length });
    });
    box.addEventListener("input", () => {
      edited = true;
      root.dataset.edited = "true";
    });
    const onStatus = () => update();
    model.on("change:status", onStatus);
    model.on("change:can_run", onStatus);

    update();
    rpc.request("steps").promise.then((c: any) => {
      if (disposed) return;
      for (const s of c?.steps ?? []) if (L.isStep(s)) addStep(s);
      showHypothesis(c?.hypothesis);
      showFinal(c);
      lastStatus = String(c?.status ?? "");
      bump();
      update();
    }).catch((err: unknown) => {
      if (!disposed) showRpcError(errors, err);
    });

    return () => {
      disposed = true;
      model.off("change:status", onStatus);
      model.off("change:can_run", onStatus);
      rpc.dispose();
      root.remove();
    };
  },
};
