"""A MAIA-style interpretability agent: a chat model runs experiments on one unit with workbench tools.

    agent = wb.Agent(model, store, unit=("neurons.12", 345))        # client=None: the local SmolLM2
    result = agent.run()                                              # -> AgentResult
    result.explanation, result.scores, result.to_pandas()
    print(result.steps[3].python)                                     # the same experiment, by hand
    agent.replay(result).ok                                           # rerun every tool call, compare
    result.save("agent.json"); wb.agent.AgentResult.load("agent.json")
    result2 = agent.resume(result, hypothesis="fires on plural nouns")  # your hypothesis, then go on

Modules: `loop` (`Agent`: the loop, resume, replay), `experiments` (the unit experiments the tools
run), `tools` (`Tool`, `DEFAULT_TOOLS`), `parsing` (`parse_step_reply`, `match_tool`), `prompts`,
`transcript` (`Step`, `AgentResult`, `ReplayReport`) and `errors` (`ToolError`, `AgentCancelled`).
"""

from .errors import AgentCancelled, ToolError
from .loop import Agent
from .parsing import match_tool, parse_step_reply
from .tools import DEFAULT_TOOLS, Tool, ToolOutput
from .transcript import AgentResult, ReplayReport, Step

__all__ = ["Agent", "AgentCancelled", "AgentResult", "DEFAULT_TOOLS", "ReplayReport", "Step", "Tool", "ToolError",
           "ToolOutput", "match_tool", "parse_step_reply"]
