// SteeringPanel: one slider per steering direction; baseline and steered generations side
// by side. Slider moves are debounced, then the kernel regenerates (streaming partial text);
// a newer request cancels the older one and its late partials are ignored.
import { Cancelled, KernelError, Rpc, type AnyModel } from "./lib/rpc";
import { el, errorBox, withStyle } from "./lib/dom";
import {
  LatestRequest, debounced, diffDirections, formatStrength, sliderStep, snap, statusText,
  strengthsOf, withStrengths, zeroStrengths, type Direction, type Phase,
} from "./lib/steering-logic";
import { imageButtons } from "./lib/snapshot";

const DEBOUNCE_MS = 150;
const PROMPT_DEBOUNCE_MS = 500;

const CSS = `
.iw-steering { display: flex; flex-direction: column; gap: 6px; max-width: 1100px; }
.iw-steering .iw-steer-top { display: flex; gap: 6px; align-items: center; flex-wrap: wrap; }
.iw-steering .iw-steer-prompt { flex: 1 1 320px; font-family: var(--jp-code-font-family, monospace); font-size: 12px; padding: 3px 6px; }
.iw-steering .iw-steer-rows { display: grid; grid-template-columns: minmax(90px, max-content) max-content minmax(160px, 1fr) 70px; gap: 2px 10px; align-items: center; }
.iw-steering .iw-steer-row { display: contents; }
.iw-steering .iw-steer-name { font-weight: 600; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.iw-steering .iw-steer-layer { color: var(--jp-ui-font-color2, #666); font-size: 11px; white-space: nowrap; }
.iw-steering .iw-steer-readout { font-family: var(--jp-code-font-family, monospace); text-align: right; font-variant-numeric: tabular-nums; }
.iw-steering input[type=range] { width: 100%; }
.iw-steering .iw-steer-empty { color: var(--jp-ui-font-color2, #888); font-style: italic; }
.iw-steering .iw-steer-panels { display: grid; grid-template-columns: 1fr 1fr; gap: 8px; }
.iw-steering .iw-steer-panel { border: 1px solid var(--jp-border-color2, #ddd); border-radius: 4px; padding: 4px 8px; min-height: 60px; }
.iw-steering .iw-steer-panel h4 { margin: 0 0 4px 0; font-size: 11px; color: var(--jp-ui-font-color2, #555); font-weight: 600; text-transform: uppercase; letter-spacing: 0.04em; }
.iw-steering .iw-steer-text { font-family: var(--jp-code-font-family, monospace); white-space: pre-wrap; word-break: break-word; margin: 0; }
.iw-steering .iw-steer-text.stale { opacity: 0.5; }
`;

interface Row {
  dir: Direction;
  slider: HTMLInputElement;
  readout: HTMLElement;
  step: number;
}

/** The site of a direction steered elsewhere than resid_post.<layer> (dictionary features). */
function siteOf(d: Direction): string | undefined {
  const site = (d as Direction & { site?: unknown }).site;
  return typeof site === "string" && site ? site : undefined;
}

function directionsOf(model: AnyModel): Direction[] {
  return ((model.get("directions") ?? []) as Direction[]).map((d) => ({ ...d }));
}

export default {
  render({ model, el: host }: { model: AnyModel; el: HTMLElement }) {
    const rpc = new Rpc(model);
    const tracker = new LatestRequest();
    let runCount = 0;
    let disposed = false;

    const root = el("div", { class: "iw-root iw-steering", "data-run-count": "0" });
    withStyle(root, CSS);

    const promptInput = el("input", {
      type: "text", class: "iw-steer-prompt", "data-testid": "prompt-input", "aria-label": "prompt", spellcheck: "false",
    });
    promptInput.value = model.get("prompt") ?? "";
    const resetBtn = el("button", { class: "iw-btn", "data-testid": "reset", title: "set every strength to 0" }, "reset");
    const stopBtn = el("button", { class: "iw-btn", "data-testid": "stop", title: "stop the running generation" }, "stop");
    const top = el("div", { class: "iw-steer-top" }, promptInput, resetBtn, stopBtn, imageButtons(rpc, root, "steering"));

    const rowsBox = el("div", { class: "iw-steer-rows", "data-testid": "directions" });
    const baselineText = el("pre", { class: "iw-steer-text", "data-testid": "baseline-text" });
    const steeredText = el("pre", { class: "iw-steer-text", "data-testid": "steered-text" });
    baselineText.textContent = model.get("baseline_text") ?? "";
    steeredText.textContent = model.get("steered_text") ?? "";
    const panels = el("div", { class: "iw-steer-panels" },
      el("div", { class: "iw-steer-panel" }, el("h4", {}, "baseline"), baselineText),
      el("div", { class: "iw-steer-panel" }, el("h4", {}, "steered"), steeredText));
    const status = el("div", { class: "iw-status", "data-testid": "status", role: "status" });
    const errors = el("div", { "data-testid": "error" });
    root.append(top, rowsBox, panels, status, errors);
    host.append(root);

    // -- state ----------------------------------------------------------------------
    let shown: Direction[] = [];
    let local: Record<string, number> = {};
    let rows: Row[] = [];
    let lastPrompt: string | null = null;

    const setStatus = (phase: Phase, ms = 0) => {
      status.textContent = statusText(phase, ms);
      status.dataset.phase = phase;
    };

    const buildRows = (dirs: Direction[]) => {
      rowsBox.replaceChildren();
      rows = [];
      shown = dirs.map((d) => ({ ...d }));
      if (!dirs.length) {
        rowsBox.append(el("div", { class: "iw-steer-empty" },
          "No directions yet: add some from Python with add_neuron(), add_mean_difference() or add_direction()."));
        return;
      }
      dirs.forEach((d, i) => {
        const step = sliderStep(d.min, d.max);
        const value = snap(local[d.name] ?? d.strength, d.min, d.max, step);
        const slider = el("input", {
          type: "range", "data-testid": "slider", "data-direction": String(i), "data-name": d.name,
          min: String(d.min), max: String(d.max), step: String(step), "aria-label": `strength of ${d.name}`,
        });
        slider.value = String(value);
        const readout = el("span", { class: "iw-steer-readout", "data-testid": "readout", "data-direction": String(i) },
          formatStrength(local[d.name] ?? d.strength, step));
        const row = el("div", { class: "iw-steer-row", "data-testid": "direction-row", "data-direction": String(i) },
          el("span", { class: "iw-steer-name", "data-testid": "direction-name", title: d.name }, d.name),
          el("span", { class: "iw-steer-layer", "data-testid": "direction-layer" }, `${siteOf(d) ?? `L${d.layer}`} · ${d.kind}`),
          slider, readout);
        const r: Row = { dir: d, slider, readout, step };
        slider.addEventListener("input", () => {
          const v = snap(Number(slider.value), d.min, d.max, step);
          local[d.name] = v;
          readout.textContent = formatStrength(v, step);
          scheduleRun();
        });
        rows.push(r);
        rowsBox.append(row);
      });
    };

    const showStrengths = () => {
      for (const r of rows) {
        const v = local[r.dir.name] ?? 0;
        r.slider.value = String(snap(v, r.dir.min, r.dir.max, r.step));
        r.readout.textContent = formatStrength(v, r.step);
      }
    };

    // -- running ----------------------------------------------------------------------
    const showError = (err: unknown) => {
      errors.replaceChildren(err instanceof KernelError
        ? errorBox(err.message, err.traceback)
        : errorBox(err instanceof Error ? err.message : String(err)));
    };

    const runNow = () => {
      if (disposed) return;
      scheduleRun.cancel();
      const strengths = { ...local };
      const prompt = promptInput.value;
      lastPrompt = prompt;
      // keep the synced state in step with the view, so Python reads what the user sees
      if (prompt !== model.get("prompt")) model.set("prompt", prompt);
      model.set("directions", withStrengths(directionsOf(model), strengths));
      model.save_changes();
      const t0 = performance.now();
      let steeredSeen = false;
      const onPartial = (c: any) => {
        if (!tracker.isCurrent(id)) return; // stale partial of a superseded request
        if (typeof c?.baseline === "string") baselineText.textContent = c.baseline;
        if (typeof c?.text === "string") {
          steeredSeen = true;
          steeredText.classList.remove("stale");
          steeredText.textContent = c.text;
        }
      };
      const { id, promise } = rpc.request("generate", { strengths, prompt }, onPartial);
      const prev = tracker.start(id);
      if (prev !== null) rpc.cancel(prev);
      steeredText.classList.add("stale");
      setStatus("generating");
      promise.then((c: any) => {
        if (disposed || !tracker.finish(id)) return;
        baselineText.textContent = c.baseline ?? "";
        steeredText.textContent = c.text ?? "";
        steeredText.classList.remove("stale");
        steeredText.dataset.steered = String(Boolean(c.steered || steeredSeen));
        errors.replaceChildren();
        setStatus("done", performance.now() - t0);
        runCount += 1;
        root.dataset.runCount = String(runCount);
      }).catch((err: unknown) => {
        if (disposed) return;
        if (err instanceof Cancelled) {
          if (tracker.finish(id)) {
            steeredText.classList.remove("stale");
            setStatus("cancelled");
          }
          return;
        }
        if (!tracker.finish(id)) return;
        steeredText.classList.remove("stale");
        showError(err);
        setStatus("error");
      });
    };
    const scheduleRun = debounced(runNow, DEBOUNCE_MS);
    const schedulePromptRun = debounced(runNow, PROMPT_DEBOUNCE_MS);

    // -- controls ---------------------------------------------------------------------
    resetBtn.addEventListener("click", () => {
      local = zeroStrengths(shown);
      showStrengths();
      runNow();
    });
    stopBtn.addEventListener("click", () => {
      scheduleRun.cancel();
      schedulePromptRun.cancel();
      const id = tracker.inFlight;
      if (id !== null) rpc.cancel(id); // the promise rejects with Cancelled → "cancelled"
    });
    // typing reruns after a pause; Enter (or leaving the field) reruns at once
    const commitPrompt = () => {
      schedulePromptRun.cancel();
      if (promptInput.value !== lastPrompt) runNow();
    };
    promptInput.addEventListener("input", () => schedulePromptRun());
    promptInput.addEventListener("change", commitPrompt);
    promptInput.addEventListener("keydown", (e: KeyboardEvent) => { if (e.key === "Enter") commitPrompt(); });

    // -- kernel-side changes ----------------------------------------------------------
    const onDirections = () => {
      const incoming = directionsOf(model);
      const diff = diffDirections(shown, incoming, local);
      const changed = diff.changed;
      const rebuild = diff.rebuild || shown.map(siteOf).join("|") !== incoming.map(siteOf).join("|");
      for (const d of incoming) if (changed.includes(d.name) || !(d.name in local)) local[d.name] = d.strength;
      for (const name of Object.keys(local)) if (!incoming.some((d) => d.name === name)) delete local[name];
      if (rebuild) buildRows(incoming);
      else showStrengths();
      if (rebuild || changed.length) scheduleRun();
    };
    const onPrompt = () => {
      const p = model.get("prompt") ?? "";
      if (p !== promptInput.value) {
        promptInput.value = p;
        scheduleRun();
      }
    };
    const onMaxTokens = () => scheduleRun();
    model.on("change:directions", onDirections);
    model.on("change:prompt", onPrompt);
    model.on("change:max_new_tokens", onMaxTokens);

    const initial = directionsOf(model);
    local = strengthsOf(initial);
    buildRows(initial);
    const first = setTimeout(runNow, 0);

    return () => {
      disposed = true;
      clearTimeout(first);
      scheduleRun.cancel();
      schedulePromptRun.cancel();
      model.off("change:directions", onDirections);
      model.off("change:prompt", onPrompt);
      model.off("change:max_new_tokens", onMaxTokens);
      rpc.dispose();
      root.remove();
    };
  },
};
