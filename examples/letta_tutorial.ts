// Letta's "Shared Memory Blocks" tutorial (TypeScript, @letta-ai/letta-client 0.1.x), run against memstore.
//
// Only where the client points differs from Letta's published code: LETTA_BASE_URL
// (memstore's `serve --http`, e.g. http://127.0.0.1:8283) and LETTA_API_KEY (its --token,
// if it has one). Run with: npm install @letta-ai/letta-client@0.1 && node --experimental-strip-types letta_tutorial.ts
import { LettaClient } from "@letta-ai/letta-client";

async function main() {
  // Initialize the Letta client using LETTA_API_KEY environment variable
  const client = new LettaClient({
    token: process.env.LETTA_API_KEY,
    baseUrl: process.env.LETTA_BASE_URL ?? "http://localhost:8283",
  });

  // Create a memory block that will be shared between agents
  const block = await client.blocks.create({
    label: "organization",
    value: "Organization: Letta",
    limit: 4000,
  });
  console.log(`Created shared block: ${block.id}\n`);

  // Create agents that share the block
  const agent1 = await client.agents.create({
    name: "agent1",
    model: "openai/gpt-4o-mini",
    blockIds: [block.id!],
    tools: ["web_search"],
  });
  console.log(`Created agent1: ${agent1.id}`);

  let agent2 = await client.agents.create({
    name: "agent2",
    model: "openai/gpt-4o-mini",
    tools: ["web_search"],
  });
  console.log(`Created agent2: ${agent2.id}`);

  // Attach the shared block to agent2
  agent2 = await client.agents.blocks.attach(agent2.id, block.id!);
  console.log(`Attached block to agent2: ${agent2.memory.blocks.map((b) => b.label)}\n`);

  // Agent1 researches and writes to the shared block
  let response = await client.agents.messages.create(agent1.id, {
    messages: [{
      role: "user",
      content: "Find information about the connection between memory blocks and Letta. " +
        "Insert what you learn into the memory block, prepended with \"Agent1: \".",
    }],
  });
  for (const msg of response.messages) {
    if (msg.messageType === "assistant_message") console.log(`Agent1 response: ${msg.content}`);
    if (msg.messageType === "tool_call_message") console.log(`Tool call: ${msg.toolCall.name}(${msg.toolCall.arguments})`);
  }

  // Agent2 researches and writes to the same block
  response = await client.agents.messages.create(agent2.id, {
    messages: [{
      role: "user",
      content: "Find information about the origin of Letta. " +
        "Insert what you learn into the memory block, prepended with \"Agent2: \".",
    }],
  });
  for (const msg of response.messages) {
    if (msg.messageType === "assistant_message") console.log(`Agent2 response: ${msg.content}`);
    if (msg.messageType === "tool_call_message") console.log(`Tool call: ${msg.toolCall.name}(${msg.toolCall.arguments})`);
  }

  // Inspect the shared block: both agents' contributions are there
  const updatedBlock = await client.blocks.retrieve(block.id!);
  console.log(`\nShared block value:\n${updatedBlock.value}\n`);

  // A read-only block: agents can read it, never change it
  const policies = await client.blocks.create({
    label: "policies",
    value: "Company policies: cite a source for every fact.",
    readOnly: true,
  });
  const agent3 = await client.agents.create({
    name: "agent3",
    model: "openai/gpt-4o-mini",
    blockIds: [policies.id!],
  });
  response = await client.agents.messages.create(agent3.id, {
    messages: [{ role: "user", content: "Add a new policy to the policies block: \"Be concise.\"" }],
  });
  for (const msg of response.messages) {
    if (msg.messageType === "tool_return_message") console.log(`Tool return (${msg.status}): ${msg.toolReturn}`);
    if (msg.messageType === "assistant_message") console.log(`Agent3 response: ${msg.content}`);
  }
  console.log(`\nPolicies block value:\n${(await client.blocks.retrieve(policies.id!)).value}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
