// Injected by tests/test_report.py into a copy of a report before Chromium opens it (not part of
// the product's page): after load, did every <img> decode, and does the chart have ink? The
// verdict goes on <body data-render-check=...>, which Chromium's --dump-dom then shows.
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var checks = imgs.map(function (img) {
    var ok = img.complete && img.naturalWidth > 0, holes = 0;
    if (ok) {  // none of these images has transparency: transparent pixels are parts that did not decode
      try {
        var c = document.createElement("canvas");
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        var g = c.getContext("2d"); g.drawImage(img, 0, 0);
        var d = g.getImageData(0, 0, c.width, c.height).data;
        for (var i = 3; i < d.length; i += 4) { if (d[i] < 255) holes++; }
      } catch (e) { holes = -1; }
    }
    return {id: img.id || img.alt, ok: ok && holes === 0, holes: holes, w: img.naturalWidth, h: img.naturalHeight};
  });
  var chart = document.getElementById("histogram"), ink = 0;
  if (chart && chart.naturalWidth > 0) {
    try {
      var c = document.createElement("canvas");
      c.width = chart.naturalWidth; c.height = chart.naturalHeight;
      var g = c.getContext("2d"); g.drawImage(chart, 0, 0);
      var d = g.getImageData(0, 0, c.width, c.height).data;
      for (var i = 0; i < d.length; i += 4) { if (d[i] < 200 || d[i + 1] < 200 || d[i + 2] < 200) ink++; }
    } catch (e) { ink = -1; }
  }
  var broken = checks.filter(function (c) { return !c.ok; }).length;
  document.body.setAttribute("data-render-check", JSON.stringify(
    {images: checks.length, broken: broken, chart_ink: ink, checks: checks}));
});
