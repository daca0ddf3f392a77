// Drives ComfyUI's real frontend in headless Chromium (playwright-core) for tests/host/test_browser.py.
//
//   node browser_workflows.js config.json result.json
//
// config: {url, chromium, workflows: [{name, path, screenshot}], screenshots: folder or null, search: [node type]}
// result: {errors: [console errors and page errors], workflows: {name: {dialogs, missing, nodes}},
//          search: {type: {display_name, options, description}}, definitions: {type: nodeData}}
// The page is driven as a user would: a workflow is loaded through app.loadGraphData (what dropping a
// file does), nodes are looked up through the node search box.
const fs = require("fs");
const path = require("path");
const { chromium } = require("playwright-core");

const [configPath, resultPath] = process.argv.slice(2);
const config = JSON.parse(fs.readFileSync(configPath, "utf8"));

async function visibleDialogs(page) {
  return page.evaluate(() => Array.from(document.querySelectorAll(".p-dialog"))
    .filter((d) => d.offsetParent !== null || getComputedStyle(d).position === "fixed")
    .map((d) => d.innerText.trim()).filter((text) => text.length > 0));
}

async function closeDialogs(page) {
  for (let i = 0; i < 3 && (await visibleDialogs(page)).length; i++) {
    await page.keyboard.press("Escape");
    await page.waitForTimeout(300);
  }
}

(async () => {
  const browser = await chromium.launch({
    executablePath: config.chromium,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  const result = { errors: [], workflows: {}, search: {}, definitions: {} };
  try {
    const page = await browser.newPage({ viewport: { width: 1600, height: 900 } });
    page.on("console", (m) => {
      if (m.type() === "error") result.errors.push({ text: m.text(), url: (m.location() || {}).url || "" });
    });
    page.on("pageerror", (e) => result.errors.push({ text: String(e && e.stack ? e.stack : e), url: "" }));
    await page.goto(config.url, { waitUntil: "load" });
    await page.waitForFunction(() => window.app && window.app.graph && window.app.vueAppReady, null,
      { timeout: 180000 });
    await page.waitForTimeout(2000);
    await closeDialogs(page);

    for (const { name, path: file, screenshot } of config.workflows) {
      const workflow = JSON.parse(fs.readFileSync(file, "utf8"));
      await page.evaluate(([json, title]) => window.app.loadGraphData(json, true, true, title), [workflow, name]);
      await page.waitForTimeout(1000);
      const dialogs = await visibleDialogs(page);
      await closeDialogs(page);
      const state = await page.evaluate(() => window.app.graph._nodes.map((n) => ({
        id: n.id, type: n.type, registered: n.type in LiteGraph.registered_node_types,
        widgets: (n.widgets || []).map((w) => [w.name, w.value]),
      })));
      result.workflows[name] = { dialogs, missing: state.filter((n) => !n.registered).map((n) => n.type), nodes: state };
      if (config.screenshots && screenshot) {
        await page.evaluate(() => { window.app.extensionManager.focusMode = true; });
        await page.evaluate(() => window.app.extensionManager.command.execute("Comfy.Canvas.FitView"));
        await page.waitForTimeout(500);
        const clip = await page.evaluate(() => {  // the nodes' bounds on the screen, with a margin
          const ds = window.app.canvas.ds, box = window.app.canvas.canvas.getBoundingClientRect();
          const bounds = [Infinity, Infinity, -Infinity, -Infinity];
          for (const n of window.app.graph._nodes) {
            bounds[0] = Math.min(bounds[0], n.pos[0]);
            bounds[1] = Math.min(bounds[1], n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT - 20);
            bounds[2] = Math.max(bounds[2], n.pos[0] + n.size[0]);
            bounds[3] = Math.max(bounds[3], n.pos[1] + n.size[1]);
          }
          const x = (v) => box.left + (v + ds.offset[0]) * ds.scale, y = (v) => box.top + (v + ds.offset[1]) * ds.scale;
          const left = Math.max(0, x(bounds[0]) - 20), top = Math.max(0, y(bounds[1]) - 20);
          return { x: left, y: top, width: Math.min(window.innerWidth, x(bounds[2]) + 20) - left,
                   height: Math.min(window.innerHeight, y(bounds[3]) + 20) - top };
        });
        await page.screenshot({ path: path.join(config.screenshots, `${name}.png`), clip });
        await page.evaluate(() => { window.app.extensionManager.focusMode = false; });
      }
    }

    for (const type of config.search || []) {
      const definition = await page.evaluate((t) => {
        const node = LiteGraph.registered_node_types[t];
        return node ? node.nodeData : null;
      }, type);
      result.definitions[type] = definition;
      if (!definition) continue;
      await page.evaluate(() => window.app.extensionManager.command.execute("Workspace.SearchBox.Toggle"));
      await page.waitForSelector(".comfy-vue-node-search-box input", { timeout: 10000 });
      await page.keyboard.type(definition.display_name);
      await page.waitForTimeout(1000);
      result.search[type] = await page.evaluate(() => ({
        options: Array.from(document.querySelectorAll(".p-autocomplete-overlay [role=option]"))
          .map((o) => o.innerText.trim()).slice(0, 5),
        description: (document.querySelector("._sb_description") || { innerText: "" }).innerText.trim(),
      }));
      await closeDialogs(page);
    }
  } finally {
    fs.writeFileSync(resultPath, JSON.stringify(result, null, 1));
    await browser.close();
  }
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
