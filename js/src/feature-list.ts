// FeatureList: a prompt's tokens → a token's most active dictionary latents (activation, label,
// promoted tokens) → a latent's dashboard (opened below). A toggle per latent zeroes it or scales
// it by a factor; the kernel reruns the prompt with those feature edits and the next-token
// predictions show baseline vs edited.
//
// Browser-test hooks: root .iw-root.iw-feature-list[data-run-count][data-position][data-latent]
// [data-tint=max|latent]; [data-role=prompt], [data-action=run]; tokens [data-role=token][data-pos]
// [data-act] (selected: data-selected="true"); [data-role=latents][data-position] with rows
// [data-role=latent-row][data-latent][data-act] holding [data-role=latent-label] (and
// [data-role=latent-explanation] when the latent has an explanation),
// [data-role=promoted] .iw-tok, [data-action=open] and the toggle select [data-role=toggle]
// (values "", "zero", "scale"); [data-role=factor]; [data-role=edits], [data-action=clear];
// [data-role=predictions] rows [data-role=pred-row][data-token][data-p-base][data-p-edit];
// [data-role=edit-status][data-edited]; the dashboard in [data-role=dashboard] (see
// feature-dashboard.ts); errors .iw-error in [data-role=errors|latent-errors|edit-errors].
import type { NDArray } from "./lib/arrays";
import { el, fmt, runCounter, showRpcError, tokenSpan, withStyle } from "./lib/dom";
import * as F from "./lib/features-logic";
import * as N from "./lib/neuron-dashboard-logic";
import { AnyModel, Cancelled, Rpc } from "./lib/rpc";
import { LatestRequest } from "./lib/steering-logic";
import { DASHBOARD_CSS, type LatentReply, type TokenScore, mountDashboard } from "./feature-dashboard";
import { imageButtons } from "./lib/snapshot";

interface RunReply { prompt: string; tokens: string[]; k: number; top_idx: NDArray; top_val: NDArray; n_active: NDArray; max_act: NDArray }
interface TokenRow { latent: number; act: number; label: string; explanation: string; promoted: TokenScore[] }
interface TokenReply { position: number; token: string; latents: TokenRow[] }
interface EditReply {
  prompt: string; edits: F.Edit[]; edited: boolean; describe: string;
  predictions: { base: unknown[]; edit: unknown[]; rows: N.PredRow[] };
}

const CSS = `
.iw-feature-list { max-width: 1200px; }
.iw-feature-list .fl-head { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; margin-bottom: 4px; }
.iw-feature-list .fl-head textarea { flex: 1 1 360px; min-width: 220px; font-family: var(--jp-code-font-family, monospace); font-size: 12px; }
.iw-feature-list .fl-tokens { line-height: 22px; padding: 4px 0; white-space: pre-wrap; word-break: break-word; }
.iw-feature-list .fl-tokens .iw-tok { cursor: pointer; border: 1px solid transparent; white-space: pre-wrap; }
.iw-feature-list .fl-tokens .iw-tok:hover { border-color: #888; }
.iw-feature-list .fl-tokens .iw-tok.fl-sel { border-color: #c0392b; border-width: 2px; }
.iw-feature-list .fl-main { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.iw-feature-list .fl-left { flex: 1 1 560px; min-width: 340px; }
.iw-feature-list .fl-right { flex: 0 1 400px; min-width: 300px; }
.iw-feature-list h4 { margin: 8px 0 3px; font-size: 12px; }
.iw-feature-list tr[data-role=latent-row].fl-open { background: rgba(40,95,225,0.12); }
.iw-feature-list tr[data-role=latent-row] td { vertical-align: top; }
.iw-feature-list .fl-promoted .iw-tok { background: rgba(40,95,225,0.12); margin-right: 3px; padding: 0 2px; }
.iw-feature-list .fl-edits { display: flex; gap: 6px; align-items: center; flex-wrap: wrap; }
.iw-feature-list .fl-factor { width: 56px; }
.iw-feature-list .up { color: var(--iw-up); }
.iw-feature-list .down { color: var(--iw-down); }
.iw-feature-list .stale { opacity: 0.5; }
`;

function render({ model, el: host }: { model: AnyModel; el: HTMLElement }): () => void {
  const rpc = new Rpc(model);
  const root = el("div", { class: "iw-root iw-feature-list", "data-run-count": "0", "data-position": "-1", "data-latent": "-1" });
  withStyle(root, CSS + DASHBOARD_CSS);
  const bump = runCounter(root);
  let disposed = false;

  // -- layout -----------------------------------------------------------------------------------------
  const btn = (action: string, label: string, tip: string) =>
    el("button", { class: "iw-btn", type: "button", "data-action": action, title: tip }, label);
  const promptInput = el("textarea", { rows: "2", "data-role": "prompt", "aria-label": "prompt", placeholder: "prompt" });
  promptInput.value = String(model.get("prompt") ?? "");
  const runBtn = btn("run", "Run", "encode the prompt's tokens");
  const status = el("span", { class: "iw-status", "data-role": "status" });
  const heading = el("div", { class: "iw-status", "data-role": "dictionary" }, String(model.get("title") ?? ""));
  const errors = el("div", { "data-role": "errors" });
  const tokensBox = el("div", { class: "fl-tokens", "data-role": "tokens" });
  const help = el("div", { class: "iw-status" },
    "Click a token to list its most active latents; click a latent to open its dashboard below; "
    + "a toggle zeroes or scales a latent in the model (all positions) and reruns the prompt.");

  const latentsBox = el("div", { "data-role": "latents", "data-position": "-1" });
  const latentErrors = el("div", { "data-role": "latent-errors" });
  const left = el("div", { class: "fl-left" }, el("h4", {}, "Active latents at the selected token"), latentErrors, latentsBox);

  const factorInput = el("input", { type: "number", step: "0.5", class: "fl-factor", "data-role": "factor", "aria-label": "scale factor" });
  factorInput.value = String(model.get("factor") ?? 4);
  const editsText = el("span", { "data-role": "edits" }, "none");
  const clearBtn = btn("clear", "clear", "turn every toggle off");
  const editStatus = el("div", { class: "iw-status", "data-role": "edit-status" });
  const editErrors = el("div", { "data-role": "edit-errors" });
  const predBox = el("div", { "data-role": "predictions" });
  const right = el("div", { class: "fl-right" },
    el("h4", {}, "Edits"), el("div", { class: "fl-edits" }, el("label", {}, "scale factor ", factorInput), "toggled: ", editsText, clearBtn),
    editErrors, el("h4", {}, "Next-token predictions: baseline vs edited"), editStatus, predBox);

  const dashBox = el("div", { "data-role": "dashboard" });
  root.append(heading, el("div", { class: "fl-head" }, promptInput, runBtn, imageButtons(rpc, root, "feature-list"), status), errors, tokensBox, help,
    el("div", { class: "fl-main" }, left, right), dashBox);
  host.append(root);

  // -- state ----------------------------------------------------------------------------------------------
  let run: RunReply | null = null;
  let position = -1;
  let edits = F.editsFrom(model.get("edits"));
  let promptActs: { latent: number; acts: ArrayLike<number> } | null = null;
  const runs = new LatestRequest();
  const tokenReq = new LatestRequest();
  const editReq = new LatestRequest();
  const dSae = Number(model.get("d_sae") ?? 1);

  const dash = mountDashboard({
    rpc, dSae, text: String(model.get("text") ?? ""), bump,
    onShown: (r: LatentReply) => {
      root.dataset.latent = String(r.state.latent);
      promptActs = r.prompt_acts ? { latent: r.state.latent, acts: r.prompt_acts.data } : null;
      if (!dashBox.contains(dash.el)) dashBox.replaceChildren(dash.el);
      tintTokens();
      markOpen();
    },
  });

  // -- the prompt's tokens ---------------------------------------------------------------------------
  function tintTokens(): void {
    if (!run) return;
    const byLatent = promptActs !== null && promptActs.acts.length === run.tokens.length;
    const vals = byLatent ? promptActs!.acts : run.max_act.data;
    const scale = F.maxPositive(vals) || 1;
    root.dataset.tint = byLatent ? "latent" : "max";
    tokensBox.querySelectorAll<HTMLElement>("[data-role=token]").forEach((s) => {
      const i = Number(s.dataset.pos);
      const a = Number(vals[i]);
      s.dataset.act = String(a);
      s.style.backgroundColor = N.actColor(a, scale);
      s.style.color = N.actTextColor(a, scale);
      s.title = byLatent
        ? `${JSON.stringify(run!.tokens[i])}: latent ${promptActs!.latent} = ${N.formatAct(a)}`
        : `${JSON.stringify(run!.tokens[i])}: ${run!.n_active.data[i]} active latents, largest ${N.formatAct(a)}`;
    });
  }

  function renderTokens(r: RunReply): void {
    const spans = r.tokens.map((t, i) => {
      const s = tokenSpan(t);
      s.dataset.role = "token";
      s.dataset.pos = String(i);
      s.tabIndex = 0;
      return s;
    });
    tokensBox.replaceChildren(...spans);
    tintTokens();
    markSelected();
  }

  function markSelected(): void {
    root.dataset.position = String(position);
    tokensBox.querySelectorAll<HTMLElement>("[data-role=token]").forEach((s) => {
      const sel = Number(s.dataset.pos) === position;
      s.classList.toggle("fl-sel", sel);
      s.dataset.selected = String(sel);
    });
  }

  function runPrompt(): void {
    if (disposed) return;
    const prompt = promptInput.value;
    const req = rpc.request<RunReply>("run", { prompt });
    const prev = runs.start(req.id);
    if (prev !== null) rpc.cancel(prev);
    status.textContent = "encoding…";
    req.promise.then((r) => {
      if (disposed || !runs.finish(req.id)) return;
      const firstRun = run === null;
      const changed = !run || run.prompt !== r.prompt;
      run = r;
      errors.replaceChildren();
      if (changed) {
        position = -1;
        latentsBox.dataset.position = "-1";
        latentsBox.replaceChildren(el("div", { class: "iw-status" }, "click a token above"));
        promptActs = null;
      }
      renderTokens(r);
      status.textContent = `${r.tokens.length} tokens · top ${r.k} latents per token`;
      bump();
      // the same prompt again: refresh the selected token; the first run: the position set in Python
      const want = firstRun ? Number(model.get("position") ?? -1) : changed ? -1 : position;
      if (want >= 0 && want < r.tokens.length) selectToken(want);
      runEdit();
      const open = dash.shown();
      if (changed && open !== null) dash.show(open); // its prompt activations changed
    }).catch((err) => {
      if (disposed || err instanceof Cancelled || !runs.finish(req.id)) return;
      showRpcError(errors, err, status);
    });
  }

  // -- a token's latents -----------------------------------------------------------------------------
  function toggleSelect(latent: number): HTMLSelectElement {
    const sel = el("select", { "data-role": "toggle", "data-latent": String(latent), "aria-label": `edit latent ${latent}` },
      el("option", { value: "" }, "off"), el("option", { value: "zero" }, "zero"), el("option", { value: "scale" }, "scale ×f"));
    sel.value = F.editOf(edits, latent)?.op ?? "";
    sel.addEventListener("change", () => {
      const f = Number(factorInput.value);
      setEdits(F.setEdit(edits, latent, sel.value as F.EditOp | "", f));
    });
    return sel;
  }

  function renderLatents(r: TokenReply): void {
    latentsBox.dataset.position = String(r.position);
    if (!r.latents.length) {
      latentsBox.replaceChildren(el("div", { class: "iw-status" }, "no latent is active at this token"));
      return;
    }
    const head = el("tr", {}, el("th", {}, "latent"), el("th", {}, "act"), el("th", {}, "label"), el("th", {}, "promotes"), el("th", {}, "edit"));
    const trs = r.latents.map((row) => {
      const open = btn("open", `#${row.latent}`, `open the dashboard of latent ${row.latent}`);
      open.addEventListener("click", () => openLatent(row.latent));
      const promoted = el("span", { class: "fl-promoted", "data-role": "promoted" }, ...row.promoted.map((t) => tokenSpan(t.token)));
      const label = el("td", {}, el("span", { "data-role": "latent-label" }, row.label || "—"));
      if (row.explanation) label.append(el("div", { class: "iw-status", "data-role": "latent-explanation" }, row.explanation));
      const tr = el("tr", { "data-role": "latent-row", "data-latent": String(row.latent), "data-act": String(row.act) },
        el("td", {}, open), el("td", { class: "num" }, fmt(row.act, 3)), label, el("td", {}, promoted),
        el("td", {}, toggleSelect(row.latent)));
      return tr;
    });
    latentsBox.replaceChildren(el("div", { class: "iw-status" },
      `token ${r.position} ${JSON.stringify(r.token)}: ${r.latents.length} active latents among the top ${run?.k ?? "k"}`),
    el("table", { class: "iw-table" }, el("thead", {}, head), el("tbody", {}, ...trs)));
    markOpen();
  }

  function markOpen(): void {
    const open = dash.shown();
    latentsBox.querySelectorAll<HTMLElement>("[data-role=latent-row]").forEach((tr) => {
      tr.classList.toggle("fl-open", open !== null && Number(tr.dataset.latent) === open);
    });
  }

  function selectToken(pos: number): void {
    if (disposed || !run) return;
    position = pos;
    markSelected();
    const req = rpc.request<TokenReply>("token", { position: pos, prompt: run.prompt });
    const prev = tokenReq.start(req.id);
    if (prev !== null) rpc.cancel(prev);
    latentsBox.classList.add("stale");
    req.promise.then((r) => {
      if (disposed || !tokenReq.finish(req.id)) return;
      latentsBox.classList.remove("stale");
      latentErrors.replaceChildren();
      renderLatents(r);
      bump();
    }).catch((err) => {
      if (disposed || err instanceof Cancelled || !tokenReq.finish(req.id)) return;
      latentsBox.classList.remove("stale");
      showRpcError(latentErrors, err);
    });
  }

  function openLatent(latent: number): void {
    if (!dashBox.contains(dash.el)) dashBox.replaceChildren(dash.el);
    dash.show(latent);
  }

  // -- edits -------------------------------------------------------------------------------------------
  function showEdits(): void {
    editsText.textContent = F.describeEdits(edits);
    latentsBox.querySelectorAll<HTMLSelectElement>("[data-role=toggle]").forEach((s) => {
      s.value = F.editOf(edits, Number(s.dataset.latent))?.op ?? "";
    });
  }

  function setEdits(next: F.Edit[]): void {
    edits = next;
    model.set("edits", next);
    model.save_changes();
    showEdits();
    runEdit();
  }

  function renderPredictions(p: EditReply["predictions"], edited: boolean): void {
    const head = el("tr", {}, el("th", {}, "next token"), el("th", {}, "baseline"), el("th", {}, "edited"), el("th", {}, "change"));
    const trs = N.orderPredictions(p.rows).map((r) => {
      const ch = N.formatChange(r.p_base, r.p_edit);
      return el("tr", { "data-role": "pred-row", "data-token": r.token, "data-id": String(r.id),
        "data-p-base": String(r.p_base), "data-p-edit": String(r.p_edit) },
        el("td", {}, tokenSpan(r.token)), el("td", { class: "num" }, N.formatPct(r.p_base)),
        el("td", { class: "num" }, edited ? N.formatPct(r.p_edit) : "="), el("td", { class: `num ${ch.sign}` }, edited ? ch.text : ""));
    });
    predBox.replaceChildren(el("table", { class: "iw-table" }, el("thead", {}, head), el("tbody", {}, ...trs)));
  }

  function runEdit(): void {
    if (disposed) return;
    const req = rpc.request<EditReply>("edit", { edits, prompt: promptInput.value });
    const prev = editReq.start(req.id);
    if (prev !== null) rpc.cancel(prev);
    predBox.classList.add("stale");
    editStatus.textContent = "running…";
    req.promise.then((c) => {
      if (disposed || !editReq.finish(req.id)) return;
      predBox.classList.remove("stale");
      editErrors.replaceChildren();
      renderPredictions(c.predictions, c.edited);
      editStatus.textContent = c.describe;
      editStatus.dataset.edited = String(c.edited);
      bump();
    }).catch((err) => {
      if (disposed || err instanceof Cancelled || !editReq.finish(req.id)) return;
      predBox.classList.remove("stale");
      showRpcError(editErrors, err, editStatus);
    });
  }

  // -- events ---------------------------------------------------------------------------------------
  tokensBox.addEventListener("click", (ev) => {
    const s = (ev.target as HTMLElement).closest<HTMLElement>("[data-role=token]");
    if (s) selectToken(Number(s.dataset.pos));
  });
  tokensBox.addEventListener("keydown", (ev) => {
    const s = (ev.target as HTMLElement).closest<HTMLElement>("[data-role=token]");
    if (s && (ev.key === "Enter" || ev.key === " ")) { ev.preventDefault(); selectToken(Number(s.dataset.pos)); }
  });
  runBtn.addEventListener("click", runPrompt);
  promptInput.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); runPrompt(); }
  });
  clearBtn.addEventListener("click", () => setEdits([]));
  factorInput.addEventListener("change", () => {
    const f = Number(factorInput.value);
    if (!Number.isFinite(f)) return;
    model.set("factor", f);
    model.save_changes();
    if (edits.some((e) => e.op === "scale")) setEdits(edits.map((e) => (e.op === "scale" ? { ...e, value: f } : { ...e })));
  });

  // kernel-side changes
  const onPrompt = () => {
    const p = String(model.get("prompt") ?? "");
    if (p !== promptInput.value && document.activeElement !== promptInput) {
      promptInput.value = p;
      runPrompt();
    }
  };
  const onEdits = () => {
    const incoming = F.editsFrom(model.get("edits"));
    if (!F.sameEdits(incoming, edits)) {
      edits = incoming;
      showEdits();
      runEdit();
    }
  };
  const onLatent = () => {
    const v = Number(model.get("latent") ?? -1);
    if (v >= 0 && v !== dash.target()) openLatent(v);
  };
  const onPosition = () => {
    const v = Number(model.get("position") ?? -1);
    if (run && v >= 0 && v < run.tokens.length && v !== position) selectToken(v);
  };
  const onFactor = () => {
    if (document.activeElement !== factorInput) factorInput.value = String(model.get("factor") ?? 4);
  };
  const onText = () => dash.setText(String(model.get("text") ?? ""));
  const handlers: [string, () => void][] = [["change:prompt", onPrompt], ["change:edits", onEdits], ["change:latent", onLatent],
    ["change:position", onPosition], ["change:factor", onFactor], ["change:text", onText]];
  for (const [e, h] of handlers) model.on(e, h);

  showEdits();
  latentsBox.replaceChildren(el("div", { class: "iw-status" }, "click a token above"));
  dashBox.replaceChildren(el("div", { class: "iw-status" }, "click a latent's # to open its dashboard here"));
  runPrompt();
  const first = Number(model.get("latent") ?? -1);
  if (first >= 0) openLatent(first);

  return () => {
    disposed = true;
    for (const [e, h] of handlers) model.off(e, h);
    dash.dispose();
    rpc.dispose();
  };
}

export default { render };
