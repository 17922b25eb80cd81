"""Letta's "Shared Memory Blocks" tutorial (Python, letta-client 1.x), run against memstore.

Only where the client points differs from Letta's published code: LETTA_BASE_URL
(memstore's `serve --http`, e.g. http://127.0.0.1:8283) and LETTA_API_KEY (its --token,
if it has one). Run with: pip install 'letta-client>=1' && python examples/letta_tutorial_v1.py
"""

import os

from letta_client import Letta

# Initialize the Letta client using LETTA_API_KEY environment variable
client = Letta(api_key=os.getenv("LETTA_API_KEY"), base_url=os.getenv("LETTA_BASE_URL", "http://localhost:8283"))

# Create a memory block that will be shared between agents
block = client.blocks.create(
    label="organization",
    value="Organization: Letta",
    limit=4000,
)
print(f"Created shared block: {block.id}\n")

# Create agents that share the block
agent1 = client.agents.create(
    name="agent1",
    model="openai/gpt-4o-mini",
    block_ids=[block.id],
    tools=["web_search"],
)
print(f"Created agent1: {agent1.id}")

agent2 = client.agents.create(
    name="agent2",
    model="openai/gpt-4o-mini",
    tools=["web_search"],
)
print(f"Created agent2: {agent2.id}")

# Attach the shared block to agent2
agent2 = client.agents.blocks.attach(
    block.id,
    agent_id=agent2.id,
)
print(f"Attached block to agent2: {[b.label for b in agent2.memory.blocks]}\n")

# Agent1 researches and writes to the shared block
response = client.agents.messages.create(
    agent_id=agent1.id,
    messages=[{"role": "user", "content": "Find information about the connection between memory blocks and Letta. "
               "Insert what you learn into the memory block, prepended with \"Agent1: \"."}],
)
for msg in response.messages:
    if msg.message_type == "assistant_message":
        print(f"Agent1 response: {msg.content}")
    if msg.message_type == "tool_call_message":
        print(f"Tool call: {msg.tool_call.name}({msg.tool_call.arguments})")

# Agent2 researches and writes to the same block
response = client.agents.messages.create(
    agent_id=agent2.id,
    messages=[{"role": "user", "content": "Find information about the origin of Letta. "
               "Insert what you learn into the memory block, prepended with \"Agent2: \"."}],
)
for msg in response.messages:
    if msg.message_type == "assistant_message":
        print(f"Agent2 response: {msg.content}")
    if msg.message_type == "tool_call_message":
        print(f"Tool call: {msg.tool_call.name}({msg.tool_call.arguments})")

# Inspect the shared block: both agents' contributions are there
updated_block = client.blocks.retrieve(block.id)
print(f"\nShared block value:\n{updated_block.value}\n")

# A read-only block: agents can read it, never change it
policies = client.blocks.create(
    label="policies",
    value="Company policies: cite a source for every fact.",
    read_only=True,
)
agent3 = client.agents.create(
    name="agent3",
    model="openai/gpt-4o-mini",
    block_ids=[policies.id],
)
response = client.agents.messages.create(
    agent_id=agent3.id,
    messages=[{"role": "user", "content": "Add a new policy to the policies block: \"Be concise.\""}],
)
for msg in response.messages:
    if msg.message_type == "tool_return_message":
        print(f"Tool return ({msg.status}): {msg.tool_return}")
    if msg.message_type == "assistant_message":
        print(f"Agent3 response: {msg.content}")
print(f"\nPolicies block value:\n{client.blocks.retrieve(policies.id).value}")
