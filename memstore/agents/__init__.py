"""The built-in agent runtime: one turn of a tool-calling loop through litellm."""

from ..errors import AgentTurnError
from .log import list_messages
from .messages import TurnResult
from .runtime import send_message

__all__ = ["AgentTurnError", "TurnResult", "list_messages", "send_message"]
