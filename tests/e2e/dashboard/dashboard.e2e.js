// Drives the dashboard of a running `troupe serve` in Debian's headless
// Chromium, through playwright-core, as an operator would: signs in (a wrong
// token first, which the error bar must report), submits a refund that needs
// a human, approves it from the approval queue, watches the run complete,
// opens it and checks its answer, its Gantt timeline (model and tool calls)
// and its trace tree; then a second refund that the operator denies. Saves a
// screenshot of the run view.
//
// Started by run.sh, which passes everything in the environment:
//   DASHBOARD_URL          http://127.0.0.1:PORT/
//   DASHBOARD_TOKEN        a token with the operator and approver roles
//   DASHBOARD_SWARM        the swarm to submit to
//   DASHBOARD_APPROVE_GOAL a goal whose run asks for approval; approved, its
//   DASHBOARD_APPROVE_ANSWER  answer contains this
//   DASHBOARD_DENY_GOAL    the same for a run whose request is denied
//   DASHBOARD_DENY_ANSWER
//   DASHBOARD_PROFILE      a fresh Chromium user-data-dir
//   DASHBOARD_SCREENSHOT   where the screenshot goes (a PNG)
//
// Every wait is Playwright's auto-waiting with a timeout; nothing sleeps.
'use strict';

const assert = require('assert');
const path = require('path');
const {chromium} = require('playwright-core');

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`dashboard.e2e: ${name} is not set`);
  return v;
};
const cfg = {
  url: env('DASHBOARD_URL'),
  token: env('DASHBOARD_TOKEN'),
  swarm: env('DASHBOARD_SWARM'),
  approveGoal: env('DASHBOARD_APPROVE_GOAL'),
  approveAnswer: env('DASHBOARD_APPROVE_ANSWER'),
  denyGoal: env('DASHBOARD_DENY_GOAL'),
  denyAnswer: env('DASHBOARD_DENY_ANSWER'),
  profile: env('DASHBOARD_PROFILE'),
  screenshot: env('DASHBOARD_SCREENSHOT'),
};

const say = (text) => console.log(`dashboard.e2e: ${text}`);
// Runs take seconds on the scripted model; these bound a hang, not a speed.
const WAIT_MS = 60000;

// The flags without which Chromium hangs on an offline machine (it tries to
// reach Google's services) or cannot start as root in a container.
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

/// A locator's text once it matches `re`.
async function textOf(locator, re) {
  await locator.filter({hasText: re}).first().waitFor({timeout: WAIT_MS});
  return (await locator.first().textContent()).trim();
}

/// Submits a run from the form and returns its id, read from the notice the
/// page shows.
async function submit(page, goal) {
  await page.locator('#swarm').selectOption(cfg.swarm);
  await page.locator('#goal').fill(goal);
  // Submitting clears the notice of an earlier submission at once (in the
  // click's handler), so the link found next is this run's.
  await page.locator('#submit-run').click();
  const link = page.locator('#submit-result a');
  await link.waitFor({timeout: WAIT_MS});
  return (await link.textContent()).trim();
}

/// Waits until the run's row in the runs table shows `status`.
async function rowWithStatus(page, runId, status) {
  const row = page.locator(`table#runs tbody tr[data-run-id="${runId}"]`);
  await row.locator(`.status.status-${status}`).waitFor({timeout: WAIT_MS});
  return row;
}

/// The pending approval of a run, once the queue shows it.
async function approvalOf(page, runId) {
  const item = page.locator(`#approvals .approval[data-run-id="${runId}"]`);
  await item.waitFor({timeout: WAIT_MS});
  return item;
}

async function main() {
  const context = await chromium.launchPersistentContext(cfg.profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: {width: 1400, height: 1000},
    timeout: WAIT_MS,
  });
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(WAIT_MS);
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e));
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') say(`browser console: ${m.type()}: ${m.text()}`);
  });

  try {
    await page.goto(cfg.url);

    // --- signing in: a wrong token is refused and the error bar says why ---
    await page.locator('#token').fill('not-a-token-of-this-server');
    await page.locator('#sign-in').click();
    const refused = await textOf(page.locator('#error-text'), /401/);
    assert(await page.locator('#error-bar').isVisible(), 'the error bar shows');
    say(`a wrong token is refused: "${refused}"`);
    assert(await page.locator('#login').isVisible(), 'the sign-in form stays after a refused token');
    assert(await page.locator('#app').isHidden(), 'nothing but the sign-in form shows after a refused token');

    await page.getByLabel('Bearer token').fill(cfg.token);
    await page.locator('#sign-in').click();
    await page.locator('#app').waitFor();
    await page.locator('#error-bar').waitFor({state: 'hidden'});
    assert.strictEqual(await page.evaluate(() => localStorage.getItem('troupe.token')), cfg.token,
      'the token is kept in localStorage');
    await page.locator(`#swarm option[value="${cfg.swarm}"]`).waitFor({state: 'attached'});
    say(`signed in; the swarm select offers ${cfg.swarm}`);

    // --- a run that needs a human, approved from the queue ---
    const runId = await submit(page, cfg.approveGoal);
    say(`submitted run ${runId}`);
    const row = await rowWithStatus(page, runId, 'running');
    assert.match(await row.textContent(), new RegExp(cfg.swarm), 'the row names the swarm');
    say(`run ${runId} shows as running in the runs table`);

    const approval = await approvalOf(page, runId);
    const asked = await approval.textContent();
    say(`its approval is queued: ${asked.replace(/\s+/g, ' ').slice(0, 160)}`);
    await approval.getByLabel('Note').fill('approved by the e2e test');
    await approval.getByRole('button', {name: 'Approve'}).click();
    await approval.waitFor({state: 'detached'});

    await rowWithStatus(page, runId, 'complete');
    say(`run ${runId} shows as complete`);

    // The status filter asks the server for one status only.
    await page.locator('#status-filter').selectOption('failed');
    await page.locator('#runs-empty').waitFor();
    assert.strictEqual(await page.locator('table#runs tbody tr').count(), 0, 'no failed runs listed');
    await page.locator('#status-filter').selectOption('complete');
    await rowWithStatus(page, runId, 'complete');
    await page.locator('#status-filter').selectOption('');
    say('the status filter lists only the runs of the status chosen');

    // --- its run view: status, answer, timeline, trace ---
    await row.locator('td.goal').click();
    await page.locator('#run-view').waitFor();
    assert.strictEqual(await textOf(page.locator('#run-id'), new RegExp(runId)), runId);
    await textOf(page.locator('#run-status'), /^complete$/);
    const answer = await textOf(page.locator('#run-answer'), cfg.approveAnswer);
    say(`the run view shows the answer: "${answer}"`);
    assert.match(page.url(), new RegExp(`#/runs/${runId}$`), 'the run view is addressable');

    const chatBars = page.locator('#timeline .bar[data-kind="chat"]');
    const toolBars = page.locator('#timeline .bar[data-kind="execute_tool"]');
    await chatBars.first().waitFor();
    await toolBars.first().waitFor();
    await page.locator('#timeline .tl-row[data-agent="support"]').waitFor();
    const chats = await chatBars.count();
    const tools = await toolBars.count();
    say(`the timeline draws ${chats} model call(s) and ${tools} tool call(s)`);
    assert(chats >= 1 && tools >= 1);
    // Bars sit inside the chart, in time order left to right.
    const lefts = await chatBars.evaluateAll((bars) => bars.map((b) => parseFloat(b.style.left)));
    assert(lefts.every((x) => x >= 0 && x <= 100), `bars inside the chart: ${lefts}`);

    await toolBars.first().hover();
    const tip = await textOf(page.locator('#tooltip'), /execute_tool/);
    assert.match(tip, /duration: /, 'the tooltip gives the duration');
    assert.match(tip, /status: /, 'the tooltip gives the status');
    say(`a tool bar's tooltip: "${tip.replace(/\s+/g, ' ').slice(0, 120)}"`);

    // The agent's span holds its model calls.
    const chatSpan = page.locator('#trace details.kind-agent details.kind-chat').first();
    await chatSpan.waitFor();
    await page.locator('#trace details.kind-agent > summary', {hasText: 'invoke_agent'}).first().waitFor();
    await chatSpan.locator('> summary').click();
    await chatSpan.locator('table.attrs th', {hasText: 'gen_ai.usage.input_tokens'}).first().waitFor();
    say('the trace tree opens a model call with its attributes');

    await page.screenshot({path: cfg.screenshot, fullPage: true});
    say(`screenshot: ${cfg.screenshot}`);

    // --- a second run, denied by the operator with a note ---
    await page.locator('#run-close').click();
    await page.locator('#run-view').waitFor({state: 'hidden'});
    const denied = await submit(page, cfg.denyGoal);
    say(`submitted run ${denied}`);
    const deniedApproval = await approvalOf(page, denied);
    await deniedApproval.getByLabel('Note').fill('too much for a kayak');
    await deniedApproval.getByRole('button', {name: 'Deny'}).click();
    await deniedApproval.waitFor({state: 'detached'});
    const deniedRow = await rowWithStatus(page, denied, 'complete');
    await deniedRow.locator('a.run-link').click();
    await textOf(page.locator('#run-answer'), cfg.denyAnswer);
    say(`run ${denied} was denied and answered accordingly`);

    // --- signing out forgets the token ---
    await page.locator('#sign-out').click();
    await page.locator('#token').waitFor();
    assert.strictEqual(await page.evaluate(() => localStorage.getItem('troupe.token')), null,
      'signing out forgets the token');

    assert.deepStrictEqual(pageErrors.map(String), [], 'the page threw no uncaught errors');
    say('passed');
  } catch (e) {
    const shot = cfg.screenshot.replace(/\.png$/, '') + '-failure.png';
    await page.screenshot({path: shot, fullPage: true}).catch(() => {});
    console.error(`dashboard.e2e: FAILED; the page as it was: ${path.resolve(shot)}`);
    if (pageErrors.length) console.error(`dashboard.e2e: errors in the page: ${pageErrors.join('\n')}`);
    throw e;
  } finally {
    await context.close();
  }
}

main().then(() => process.exit(0), (e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
