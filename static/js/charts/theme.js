// The look every chart shares, in one module: the app's fonts, transparent backgrounds, light
// grid lines, Plotly's config, and the palette that colour tokens from the API map to (an
// attention kind's colour is a token on its engine class, e.g. "teal", never a kind name here).

export const FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
export const MONO = "ui-monospace, SFMono-Regular, Menlo, monospace";

// token -> colour
export const PALETTE = {
  indigo: "#4f46e5", teal: "#0d9488", amber: "#d97706", pink: "#db2777", slate: "#64748b", grey: "#94a3b8",
};

// the live charts' named colours
export const COLORS = { accent: PALETTE.indigo, pink: PALETTE.pink, teal: PALETTE.teal, amber: PALETTE.amber, grey: PALETTE.grey };

/** The colour of a token from the API; an unknown token (a kind registered with a new one) is slate. */
export function color(token) {
  return PALETTE[token] || PALETTE.slate;
}

export const AXIS = { gridcolor: "#eef0f3", zerolinecolor: "#e3e6eb", linecolor: "#e3e6eb", tickfont: { size: 11 }, automargin: true };
export const THEME = {
  font: { family: FONT, size: 11, color: "#4b5565" },
  paper_bgcolor: "rgba(0,0,0,0)",
  plot_bgcolor: "rgba(0,0,0,0)",
};

export const CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d", "autoScale2d"] };
