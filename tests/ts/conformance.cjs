// Strict conformance: memstore's /v1 responses parsed by the TypeScript client's own schemas.
//
// The client itself parses responses leniently (skipValidation), so a missing field would
// only surface later in a user's program. This parses each response the way the client's
// schemas define it, strictly, and prints "Failed to validate" with every problem found.
// Usage: node conformance.cjs <path to @letta-ai/letta-client>   (LETTA_BASE_URL, LETTA_API_KEY)
const client = process.argv[2];
const s = require(`${client}/serialization/index.js`);
const blocksList = require(`${client}/serialization/resources/blocks/client/list.js`).Response;
const agentsList = require(`${client}/serialization/resources/agents/client/list.js`).Response;
const messagesList = require(`${client}/serialization/resources/agents/resources/messages/client/list.js`).Response;

const base = process.env.LETTA_BASE_URL;
const headers = { Authorization: `Bearer ${process.env.LETTA_API_KEY}`, "Content-Type": "application/json" };
const options = { unrecognizedObjectKeys: "passthrough", allowUnrecognizedUnionMembers: false,
                  allowUnrecognizedEnumValues: false, breadcrumbsPrefix: ["response"] };
let failures = 0;

async function check(method, path, schema, body) {
  const response = await fetch(base + path, { method, headers, body: body && JSON.stringify(body) });
  const data = await response.json();
  if (!response.ok) {
    failures++;
    console.log(`${method} ${path}: HTTP ${response.status} ${JSON.stringify(data)}`);
    return data;
  }
  const parsed = schema.parse(data, options);
  if (!parsed.ok) {
    failures++;
    console.log([`Failed to validate. ${method} ${path}`,
                 ...parsed.errors.map((e) => `  - ${e.path.join(".")}: ${e.message}`)].join("\n"));
  } else {
    console.log(`ok ${method} ${path}`);
  }
  return data;
}

async function main() {
  const [agent] = await check("GET", "/v1/agents/?name=agent1", agentsList);
  const [block] = await check("GET", "/v1/blocks/?label=organization", blocksList);
  await check("GET", "/v1/health/", s.Health);
  await check("GET", "/v1/blocks/", blocksList);
  await check("GET", `/v1/blocks/${block.id}`, s.Block);
  await check("PATCH", `/v1/blocks/${block.id}`, s.Block, { description: "Shared information between all agents." });
  await check("GET", `/v1/blocks/${block.id}/agents`, agentsList);
  await check("GET", "/v1/agents/", agentsList);
  await check("GET", `/v1/agents/${agent.id}`, s.AgentState);
  await check("GET", `/v1/agents/${agent.id}/core-memory/blocks`, blocksList);
  await check("GET", `/v1/agents/${agent.id}/core-memory/blocks/organization`, s.Block);
  await check("PATCH", `/v1/agents/${agent.id}/core-memory/blocks/organization`, s.Block, { limit: 5000 });
  await check("POST", `/v1/agents/${agent.id}/messages`, s.LettaResponse,
              { messages: [{ role: "user", content: "Note that you checked the block." }] });
  await check("GET", `/v1/agents/${agent.id}/messages?order=asc`, messagesList);
  if (failures) process.exit(1);
}

main().catch((err) => { console.error(err); process.exit(1); });
