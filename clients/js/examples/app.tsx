/**
 * Example app: a live token list (trending every 5 s, last trade per
 * token) and a token detail page (trades, bid/ask), fed by `surge feed`
 * through a surge gateway. `?gateway=ws://host:port/ws` picks the gateway.
 *
 * It also checks what the SDK promises: `surge feed` numbers its trades
 * (`trade_id`, one sequence over all tokens), and every trade is received
 * over `odin.token.*.trade`, so a missing or repeated `trade_id` that the
 * gateway did not announce as a gap would be a broken guarantee. The
 * footer shows the count; the browser test reads `window.__surgeExample`.
 */
import { useState, useEffect, StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { connect, type Gap } from "@surge-gateway/client";
import { SurgeProvider, useChannel, useSurgeEvent, useSurgeState } from "@surge-gateway/client/react";

interface Trade {
  symbol: string;
  price: number;
  qty: number;
  side: "buy" | "sell";
  trade_id: number;
  ts: number;
}
interface Liquidity {
  symbol: string;
  bid: number;
  ask: number;
  bid_size: number;
  ask_size: number;
}
interface Trending {
  window_s: number;
  ts: number;
  top: { symbol: string; volume: number; trades: number; change_pct: number; price: number }[];
}

const params = new URLSearchParams(location.search);
const gateway = params.get("gateway") ?? `ws://${location.hostname || "127.0.0.1"}:8080/ws`;
const client = connect(gateway.split(","));

/** trade_id continuity over every trade, outside React so routing does not matter. */
const check = {
  trades: 0,
  firstTradeId: null as number | null,
  lastTradeId: null as number | null,
  silentGaps: 0,
  duplicates: 0,
  announcedGaps: [] as Gap["kind"][],
  recovered: 0,
  /** Connections lost after their welcome (failed attempts not counted). */
  reconnects: 0,
};
client.subscribe<Trade>("odin.token.*.trade", (m) => {
  const id = m.data.trade_id;
  check.trades += 1;
  if (m.recovered) check.recovered += 1;
  if (check.lastTradeId !== null) {
    if (id <= check.lastTradeId) check.duplicates += 1;
    else if (id !== check.lastTradeId + 1) check.silentGaps += 1;
  } else {
    check.firstTradeId = id;
  }
  check.lastTradeId = Math.max(id, check.lastTradeId ?? id);
});
client.on("gap", (gap) => {
  // Announced: the app would refetch a snapshot; continuity restarts.
  check.announcedGaps.push(gap.kind);
  check.lastTradeId = null;
});
client.on("disconnected", (d) => {
  if (d.opened) check.reconnects += 1;
});
(window as unknown as { __surgeExample: unknown }).__surgeExample = { check, client };

function useRoute(): string {
  const [route, setRoute] = useState(location.hash || "#/");
  useEffect(() => {
    const onHash = (): void => setRoute(location.hash || "#/");
    window.addEventListener("hashchange", onHash);
    return () => window.removeEventListener("hashchange", onHash);
  }, []);
  return route;
}

function fmt(n: number): string {
  return n >= 100 ? n.toFixed(2) : n >= 1 ? n.toFixed(4) : n.toPrecision(4);
}

function TokenList() {
  const [trending, setTrending] = useState<Trending | null>(null);
  const [last, setLast] = useState<Record<string, { trade: Trade; prev: number | null; count: number }>>({});
  useChannel<Trending>("odin.global.trending", (m) => setTrending(m.data));
  useChannel<Trade>("odin.token.*.trade", (m) =>
    setLast((all) => {
      const before = all[m.data.symbol];
      return { ...all, [m.data.symbol]: { trade: m.data, prev: before?.trade.price ?? null, count: (before?.count ?? 0) + 1 } };
    }),
  );
  const rows = Object.values(last).sort((a, b) => b.count - a.count);
  return (
    <main>
      <section>
        <h2>Trending · top {trending?.top.length ?? 0} by volume, last {trending?.window_s ?? 5} s</h2>
        {trending === null ? (
          <p data-testid="trending-waiting">waiting for the next trending window (every 5 s)…</p>
        ) : (
          <table data-testid="trending">
            <thead>
              <tr><th>token</th><th>volume $</th><th>trades</th><th>change</th><th>price</th></tr>
            </thead>
            <tbody>
              {trending.top.map((t) => (
                <tr key={t.symbol}>
                  <td><a href={`#/token/${t.symbol}`}>{t.symbol}</a></td>
                  <td>{Math.round(t.volume).toLocaleString("en-US")}</td>
                  <td>{t.trades}</td>
                  <td className={t.change_pct >= 0 ? "up" : "down"}>{t.change_pct.toFixed(3)} %</td>
                  <td>{fmt(t.price)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </section>
      <section>
        <h2>All tokens · last trade, live</h2>
        <table data-testid="tokens">
          <thead>
            <tr><th>token</th><th>price</th><th>qty</th><th>side</th><th>trades seen</th></tr>
          </thead>
          <tbody>
            {rows.map(({ trade, prev, count }) => (
              <tr key={trade.symbol}>
                <td><a href={`#/token/${trade.symbol}`}>{trade.symbol}</a></td>
                <td className={prev === null || trade.price >= prev ? "up" : "down"}>{fmt(trade.price)}</td>
                <td>{trade.qty}</td>
                <td>{trade.side}</td>
                <td>{count}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </section>
    </main>
  );
}

function TokenDetail(props: { symbol: string }) {
  const [trades, setTrades] = useState<Trade[]>([]);
  const [book, setBook] = useState<Liquidity | null>(null);
  useChannel<Trade>(`odin.token.${props.symbol}.trade`, (m) => setTrades((all) => [m.data, ...all].slice(0, 15)));
  useChannel<Liquidity>(`odin.token.${props.symbol}.liquidity`, (m) => setBook(m.data));
  const lastTrade = trades[0];
  return (
    <main>
      <section>
        <h2><a href="#/">← all tokens</a> · {props.symbol}</h2>
        <div className="big" data-testid="detail-price">{lastTrade === undefined ? "–" : fmt(lastTrade.price)}</div>
        <p>
          bid {book === null ? "–" : `${fmt(book.bid)} × ${book.bid_size}`} · ask{" "}
          {book === null ? "–" : `${fmt(book.ask)} × ${book.ask_size}`}
        </p>
      </section>
      <section>
        <h2>Recent trades</h2>
        <table data-testid="detail-trades">
          <thead>
            <tr><th>trade</th><th>price</th><th>qty</th><th>side</th></tr>
          </thead>
          <tbody>
            {trades.map((t) => (
              <tr key={t.trade_id}>
                <td>#{t.trade_id}</td>
                <td className={t.side === "buy" ? "up" : "down"}>{fmt(t.price)}</td>
                <td>{t.qty}</td>
                <td>{t.side}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </section>
    </main>
  );
}

function Footer() {
  const [, tick] = useState(0);
  useEffect(() => {
    const timer = setInterval(() => tick((n) => n + 1), 500);
    return () => clearInterval(timer);
  }, []);
  const position = client.position();
  return (
    <footer data-testid="footer">
      <span data-testid="trades-count">trades received {check.trades}</span>
      <span data-testid="continuity">
        trade_id continuity: {check.silentGaps === 0 && check.duplicates === 0 ? "intact" : "BROKEN"} ({check.silentGaps} silent gaps, {check.duplicates} duplicates)
      </span>
      <span>recovered after reconnects {check.recovered}</span>
      <span>connections lost {check.reconnects}</span>
      <span>last sseq {position.sseq ?? "–"}</span>
    </footer>
  );
}

function App() {
  const route = useRoute();
  const state = useSurgeState();
  const [gapNotice, setGapNotice] = useState<string | null>(null);
  useSurgeEvent("gap", (gap) =>
    setGapNotice(
      gap.kind === "epoch_changed"
        ? "The gateway's stream restarted: what was published meanwhile is unknown; live data resumed."
        : `Some updates could not be recovered (${gap.kind}); live data resumed.`,
    ),
  );
  const detail = /^#\/token\/([A-Z0-9_-]+)$/.exec(route);
  return (
    <>
      <header>
        <h1><a href="#/">surge · live tokens</a></h1>
        <span className={`pill ${state.status}`} data-testid="status">{state.status}</span>
        <span className="pill">{state.url ?? gateway}</span>
        {state.status === "reconnecting" && state.retryInMs !== null ? (
          <span className="pill">retry in {Math.round(state.retryInMs)} ms</span>
        ) : null}
      </header>
      {state.throttle !== null && state.throttle.level > 0 ? <p className="notice">{state.throttle.message}</p> : null}
      {gapNotice !== null ? <p className="notice">{gapNotice}</p> : null}
      {detail?.[1] !== undefined ? <TokenDetail symbol={detail[1]} /> : <TokenList />}
      <Footer />
    </>
  );
}

const root = document.getElementById("root");
if (root !== null) {
  createRoot(root).render(
    <StrictMode>
      <SurgeProvider client={client}>
        <App />
      </SurgeProvider>
    </StrictMode>,
  );
}
