/**
 * NeuroNova: OHIF behind the NeuroNova gateway. Copied into OHIF's dist/ by the local stack
 * (neuronova/ohif.py) and by the nginx image (nginx/Dockerfile).
 *
 * Same-origin DICOMweb through the gate. Images are fetched as whole files by WADO-URI and
 * decoded in the browser (OpenJPH WebAssembly): Orthanc 1.10.1 labels WADO-RS frames of HTJ2K
 * as explicit little endian, and OHIF's WADO-RS loader trusts that label (grey images).
 * No study list: studies are opened by viewer links only.
 *
 * The viewer token: the link's landing page (/view, webapp/viewer.py) leaves it in this tab's
 * sessionStorage with the study it opens. It is never put in an address (OHIF's own `?token=`
 * would show it in the address bar and history): the function below adds it as
 * `Authorization: Bearer` to this origin's gate requests (/dicom-web/, /wado) only, and only
 * while the page shows that study. The gate also wants the browser's HttpOnly cookie the token
 * is bound to, so a token copied elsewhere opens nothing.
 */
(function sendTheViewerTokenToTheGate() {
  var held = null;
  try {
    held = JSON.parse(window.sessionStorage.getItem('neuronova.viewer') || 'null');
  } catch (e) {
    held = null;
  }
  var shown = null;
  new URLSearchParams(window.location.search).forEach(function (value, key) {
    if (key.toLowerCase() === 'studyinstanceuids') shown = value;
  });
  if (!held || typeof held.token !== 'string' || held.study !== shown) return;
  var authorization = 'Bearer ' + held.token;

  function isGated(url) {
    var target;
    try {
      target = new URL(String(url), window.location.href);
    } catch (e) {
      return false;
    }
    return (
      target.origin === window.location.origin &&
      (target.pathname === '/wado' || target.pathname.indexOf('/dicom-web/') === 0)
    );
  }

  var gated = new WeakSet();
  var xhr = XMLHttpRequest.prototype;
  var open = xhr.open;
  var setRequestHeader = xhr.setRequestHeader;
  var send = xhr.send;
  xhr.open = function (method, url) {
    if (isGated(url)) gated.add(this);
    else gated.delete(this);
    return open.apply(this, arguments);
  };
  xhr.setRequestHeader = function (name) {
    // Ours is the only Authorization a gated request carries.
    if (gated.has(this) && String(name).toLowerCase() === 'authorization') return undefined;
    return setRequestHeader.apply(this, arguments);
  };
  xhr.send = function () {
    if (gated.has(this)) setRequestHeader.call(this, 'Authorization', authorization);
    return send.apply(this, arguments);
  };

  var originalFetch = window.fetch;
  window.fetch = function (input, init) {
    var url = input instanceof Request ? input.url : input;
    if (!isGated(url)) return originalFetch.apply(this, arguments);
    var request = new Request(input, init);
    var headers = new Headers(request.headers);
    headers.set('Authorization', authorization);
    return originalFetch.call(this, new Request(request, { headers: headers }));
  };
})();

/**
 * How a study opens (issue 16): the MR with the AI's segmentation already over it (no prompt,
 * no double-click), on the slice with the largest lesion area. The viewer link's page adds
 * `initialSOPInstanceUID` (that slice, from the reading: webapp/viewer.py); without one, the
 * middle slice. One hanging protocol does it: a single stack viewport holding the MR and, as
 * an overlay, the study's SEG (OHIF 3.13 loads an overlay display set by itself); a study
 * without a SEG shows the MR alone. The look-up of the patient's other studies is left to the
 * gate, which answers it with this study only (webapp/gate_paths.py).
 */
function neuronovaUrlParam(name) {
  var found = null;
  new URLSearchParams(window.location.search).forEach(function (value, key) {
    if (found === null && key.toLowerCase() === name) found = value;
  });
  return found;
}

/**
 * The AI's findings in the measurement panel (issue 24): OHIF lists an SR's measurements only
 * once the SR is "hydrated", which it does by itself only for an SR shown alone in a viewport
 * (and our viewport holds the MR with the SEG). So when a study's display sets arrive, each
 * TID 1500 report is loaded and, when OHIF can take its measurements (tasks/dicom/sr.py writes
 * each lesion as a Length it can: "Lesion 1 — 4.2 mL", its longest diameter on its key slice),
 * hydrated into the panel; the viewport stays as it is. A report OHIF cannot read is left (a
 * warning in the console), the images and the SEG are unaffected.
 */
var neuronovaHydration = null; // the display-set subscription, while the mode is on

function neuronovaHydrateReports(displaySets, commands) {
  // Tried again each time display sets arrive: a report may come before the images it refers
  // to (the study loads lazily), and OHIF marks its measurements placeable as they come.
  var reports = displaySets.getActiveDisplaySets().filter(function (d) {
    return d.Modality === 'SR' && d.isImagingMeasurementReport && !d.isHydrated &&
      !d.neuronovaBusy && !d.neuronovaFailed && typeof d.load === 'function';
  });
  reports.forEach(function (report) {
    report.neuronovaBusy = true;
    Promise.resolve(report.isLoaded ? null : report.load())
      .then(function () {
        var placed = (report.measurements || []).some(function (m) { return m.loaded; });
        if (report.isRehydratable && placed && !report.isHydrated) {
          commands.runCommand('hydrateStructuredReport', {
            displaySetInstanceUID: report.displaySetInstanceUID,
          });
        }
      })
      .catch(function (error) {
        report.neuronovaFailed = true;
        console.warn('neuronova: a report was not listed', error);
      })
      .then(function () { report.neuronovaBusy = false; });
  });
}

var neuronovaViewerExtension = {
  id: 'neuronova-viewer',
  onModeEnter: function (context) {
    var displaySets = context.servicesManager.services.displaySetService;
    var commands = context.commandsManager;
    var later = function () {
      setTimeout(function () { neuronovaHydrateReports(displaySets, commands); }, 0);
    };
    neuronovaHydration = displaySets.subscribe(displaySets.EVENTS.DISPLAY_SETS_ADDED, later);
    later();
  },
  onModeExit: function () {
    if (neuronovaHydration) neuronovaHydration.unsubscribe();
    neuronovaHydration = null;
  },
  preRegistration: function (context) {
    var hangingProtocols = context.servicesManager.services.hangingProtocolService;
    hangingProtocols.addCustomAttribute(
      'neuronovaInitialImage',
      'The image to open on: the link’s initialSOPInstanceUID in the MR, else none',
      function (displaySets) {
        var images = (displaySets || []).filter(function (d) {
          return !d.isOverlayDisplaySet && d.Modality !== 'SEG';
        })[0];
        var sop = neuronovaUrlParam('initialsopinstanceuid');
        if (!images || !sop) return undefined;
        var index = (images.instances || []).findIndex(function (i) {
          return i.SOPInstanceUID === sop;
        });
        return index >= 0 ? { index: index } : undefined;
      }
    );
  },
  getHangingProtocolModule: function () {
    return [
      {
        name: 'neuronova.mrWithSeg',
        protocol: {
          id: 'neuronova.mrWithSeg',
          name: 'MR with the AI segmentation',
          protocolMatchingRules: [],
          toolGroupIds: ['default'],
          numberOfPriorsReferenced: 0,
          defaultViewport: {
            viewportOptions: { viewportType: 'stack', toolGroupId: 'default', allowUnmatchedView: true },
            displaySets: [{ id: 'images', matchedDisplaySetsIndex: -1 }],
          },
          displaySetSelectors: {
            images: {
              seriesMatchingRules: [
                { attribute: 'numImageFrames', constraint: { greaterThan: { value: 0 } }, required: true },
                { attribute: 'Modality', constraint: { equals: 'MR' }, weight: 5 },
                { attribute: 'isDisplaySetFromUrl', constraint: { equals: true }, weight: 20 },
              ],
            },
            seg: {
              seriesMatchingRules: [{ attribute: 'Modality', constraint: { equals: 'SEG' }, required: true }],
            },
          },
          stages: [
            {
              name: 'default',
              viewportStructure: { layoutType: 'grid', properties: { rows: 1, columns: 1 } },
              viewports: [
                {
                  viewportOptions: {
                    viewportId: 'default',
                    viewportType: 'stack',
                    toolGroupId: 'default',
                    allowUnmatchedView: true,
                    initialImageOptions: { custom: 'neuronovaInitialImage', defaultValue: { preset: 'middle' } },
                  },
                  displaySets: [{ id: 'images' }, { id: 'seg' }],
                },
              ],
            },
          ],
        },
      },
    ];
  },
};

window.config = {
  name: 'neuronova',
  routerBasename: '/',
  extensions: [neuronovaViewerExtension],
  modes: [],
  // The study opens on neuronova.mrWithSeg (above): the MR with the AI's SEG over it.
  modesConfiguration: {
    '@ohif/mode-longitudinal': { hangingProtocol: { $set: 'neuronova.mrWithSeg' } },
  },
  // A SEG, RT or SR that reaches a viewport is loaded without asking first.
  disableConfirmationPrompts: true,
  customizationService: {
    // In this (phase-tagged) form OHIF reads no top-level keys: everything goes in a phase.
    // No onboarding tour: it covers the viewport until dismissed, on every new browser profile.
    global: { 'ohif.tours': { $set: [] } },
    // A radiologist corrects the AI's SEG in place (issue 24): the segmentation tools (brush,
    // eraser…) in the viewer mode, the SEG panel editable, and its Export → DICOM SEG saving to
    // the archive by STOW-RS, which the webapp takes only from a radiologist's viewer
    // (webapp/corrections.py). As OHIF's own customizations/segmentation/segmentationEditing
    // says for the longitudinal ("viewer") mode.
    mode: {
      viewer: {
        toolbarButtons: { $push: [{ $reference: 'cornerstone.segmentationToolbarButtons' }] },
        toolbarSections: { $push: [{ $reference: 'cornerstone.segmentationToolbarSections' }] },
        toolGroupAdditions: {
          default: { $push: [{ $reference: 'cornerstone.segmentationTools' }] },
          mpr: { $push: [{ $reference: 'cornerstone.segmentationTools' }] },
        },
        'panelSegmentation.disableEditing': { $set: false },
        rightPanels: {
          $set: [
            '@ohif/extension-cornerstone.panelModule.panelSegmentationWithToolsLabelMap',
            '@ohif/extension-cornerstone.panelModule.panelSegmentationWithToolsContour',
            '@ohif/extension-measurement-tracking.panelModule.trackedMeasurements',
          ],
        },
      },
    },
  },
  showStudyList: false,
  maxNumberOfWebWorkers: 3,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  groupEnabledModesFirst: true,
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 10 },
  showErrorDetails: 'dev',
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'neuronova',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'neuronova',
      configuration: {
        friendlyName: 'NeuroNova archive',
        name: 'neuronova',
        qidoRoot: window.location.origin + '/dicom-web',
        wadoRoot: window.location.origin + '/dicom-web',
        wadoUriRoot: window.location.origin + '/wado',
        qidoSupportsIncludeField: false,
        supportsReject: false,
        // A saved SEG is a binary Segmentation (1.2.840.10008.5.1.4.1.1.66.4), uncompressed,
        // which the webapp checks with highdicom: not OHIF 3.13's default Label Map SEG with RLE.
        segmentation: { store: { defaultMode: 'bitmap', transferSyntaxUID: '1.2.840.10008.1.2.1' } },
        imageRendering: 'wadouri',
        thumbnailRendering: 'wadouri',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: false,
        staticWado: false,
        singlepart: 'bulkdata,video,pdf',
        bulkDataURI: { enabled: false },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
